module github.com/medpipe/medpipe/wire

go 1.26
