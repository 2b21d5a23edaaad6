package deploy

import (
	"os/exec"
	"strings"
	"testing"
)

// TestHAProxyStartsBeforeIngestResolves checks the shipped haproxy.cfg with
// the real haproxy where the ingest names do not resolve (as when compose
// starts haproxy before the ingest containers): the configuration is
// accepted, the servers wait for DNS (resolvers docker) instead of haproxy
// refusing to start.
func TestHAProxyStartsBeforeIngestResolves(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Fatal("haproxy not installed: run ./scripts/test.sh (it installs it) or apt-get install haproxy")
	}
	out, err := exec.Command(bin, "-c", "-f", "haproxy.cfg").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Configuration file is valid") {
		t.Fatalf("haproxy -c haproxy.cfg: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "ALERT") {
		t.Errorf("haproxy alerts:\n%s", out)
	}
}
