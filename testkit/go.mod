module github.com/medpipe/medpipe/testkit

go 1.26


