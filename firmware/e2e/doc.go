// Package e2e holds the firmware's host end-to-end tests: the firmware
// built with standard Go, its UART wired to a fake ESP8266 whose TCP links
// reach a real `medpipe up` on loopback, and a real browser on the
// configuration page.
package e2e
