module github.com/medpipe/medpipe/cmd/medpipe

go 1.26

require github.com/medpipe/medpipe/wire v0.0.0
require github.com/medpipe/medpipe/bus v0.0.0
require github.com/medpipe/medpipe/ingest v0.0.0
require github.com/medpipe/medpipe/decrypt v0.0.0
require github.com/medpipe/medpipe/publish v0.0.0
require github.com/medpipe/medpipe/simulator v0.0.0
require github.com/medpipe/medpipe/testkit v0.0.0

replace github.com/medpipe/medpipe/wire => ../../wire
replace github.com/medpipe/medpipe/bus => ../../bus
replace github.com/medpipe/medpipe/ingest => ../../ingest
replace github.com/medpipe/medpipe/decrypt => ../../decrypt
replace github.com/medpipe/medpipe/publish => ../../publish
replace github.com/medpipe/medpipe/simulator => ../../simulator
replace github.com/medpipe/medpipe/testkit => ../../testkit
