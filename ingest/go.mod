module github.com/medpipe/medpipe/ingest

go 1.26

require github.com/medpipe/medpipe/wire v0.0.0
require github.com/medpipe/medpipe/bus v0.0.0
require github.com/medpipe/medpipe/testkit v0.0.0

replace github.com/medpipe/medpipe/wire => ../wire
replace github.com/medpipe/medpipe/bus => ../bus
replace github.com/medpipe/medpipe/testkit => ../testkit
