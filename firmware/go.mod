module github.com/medpipe/medpipe/firmware

go 1.26

require github.com/medpipe/medpipe/wire v0.0.0

require github.com/klauspost/compress v1.20.3

replace github.com/medpipe/medpipe/wire => ../wire
