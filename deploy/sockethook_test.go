package deploy

import (
	_ "embed"
)

// socketHookJS is testdata/sockethook.js: hookSocketIO, which hands every
// socket.io event a dashboard page receives to a handler.
//
//go:embed testdata/sockethook.js
var socketHookJS string

// socketHook returns a script for page.AddScriptToEvaluateOnNewDocument
// that hooks the page's socket.io connection and calls handler, a
// JavaScript function expression (name, arg) => {...}, with each event.
func socketHook(handler string) string {
	return "(() => {\n" + socketHookJS + "\nhookSocketIO(" + handler + ");\n})()"
}
