module github.com/medpipe/medpipe/simulator

go 1.26

require github.com/medpipe/medpipe/wire v0.0.0

replace github.com/medpipe/medpipe/wire => ../wire
