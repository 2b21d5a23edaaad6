package decrypt

// DefaultMaxInFlight bounds frames handled but not yet stored, per
// partition: the package's default and `medpipe decrypt`'s flag.
const DefaultMaxInFlight = 512
