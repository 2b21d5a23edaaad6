// Package browser starts headless Chromium for the tests that look at what
// a person sees (the Node-RED dashboards, the firmware's configuration
// page). It is apart from testkit so that chromedp is a dependency of those
// tests only, not of every package's tests.
package browser

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// ChromiumPath finds Debian's Chromium, or fails the test: the README's
// test command installs it.
func ChromiumPath(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"chromium", "chromium-browser"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatal("chromium is not installed: run ./scripts/test.sh (it installs Debian's chromium)")
	return ""
}

// Start starts headless Chromium with a fresh profile and the flags this
// closed network needs (no background connections), and returns a chromedp
// context for it; the browser ends with ctx or the test.
func Start(ctx context.Context, t testing.TB) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(ChromiumPath(t)), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true), chromedp.WindowSize(1400, 1100),
		// chromedp's 20 s for Chromium to start is not enough on a busy CI machine.
		chromedp.WSURLReadTimeout(2*time.Minute))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(func() { bcancel(); acancel() })
	return bctx
}
