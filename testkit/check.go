package testkit

import (
	"testing"
	"time"
)

// CheckFor calls f every sleep until it returns nil, and fails the test
// with f's last error once totalWait has passed. Give a generous totalWait:
// it tells a stuck condition from a slow one on a busy machine, and costs
// nothing when the condition holds early. (The shape of nats-server's
// checkFor.)
func CheckFor(t testing.TB, totalWait, sleep time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(totalWait)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true within %v: %v", totalWait, err)
		}
		time.Sleep(sleep)
	}
}
