package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/ingest"
)

// Stack modes.
const (
	ModeEmbedded = "embedded" // one `medpipe up` process: server, MQTT and every stage
	ModeProcess  = "process"  // a nats-server (in the bench process) and one process per stage
	ModeExternal = "external" // stage processes against the given NATS and MQTT
)

// MQTT brokers of the embedded and process modes.
const (
	BrokerStack     = "stack"     // nats-server's own MQTT listener (up's, or the bench's nats-server)
	BrokerMosquitto = "mosquitto" // a Mosquitto the bench starts (max_queued_messages raised)
)

// stack is the pipeline under test.
type stack struct {
	// natsURL and mqttURL are what the bench's own clients use: against
	// `up`, they carry the generated credentials of the admin (NATS) and
	// the bridge (MQTT writes); mqttReadURL is the dashboard's (MQTT reads).
	natsURL, mqttURL, mqttReadURL, edge string
	procs                               []*proc
}

// proc is one child process of the stack.
type proc struct {
	name, http string
	cmd        *exec.Cmd
	log        *os.File
	done       chan error
}

// freeAddr returns a free loopback address.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func freePort() (int, error) {
	a, err := freeAddr()
	if err != nil {
		return 0, err
	}
	_, p, _ := net.SplitHostPort(a)
	return strconv.Atoi(p)
}

// publishArgs are the publish flags of the layout under test.
func publishArgs(o Options) []string {
	args := []string{"--qos", strconv.Itoa(o.QoS)}
	if o.Layout == LayoutJSON {
		return append(args, "--json-only")
	}
	return append(args, "--json-topic") // the bench accounts from the JSON topic
}

// startStack starts the stack of o.Mode, its processes logging into dir.
func startStack(ctx context.Context, o Options, keys, dir string) (*stack, error) {
	s := &stack{}
	var err error
	if s.edge, err = freeAddr(); err != nil {
		return nil, err
	}
	// The broker of the embedded and process modes, when it is not
	// nats-server's own (setDefaults chose it, --cluster included).
	var mosquitto string
	if o.Broker == BrokerMosquitto {
		if mosquitto, err = s.startMosquitto(ctx, dir); err != nil {
			return s, err
		}
	}
	switch o.Mode {
	case ModeEmbedded:
		np, err1 := freePort()
		mp, err2 := freePort()
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		s.natsURL = "nats://127.0.0.1:" + strconv.Itoa(np)
		s.mqttURL = "tcp://127.0.0.1:" + strconv.Itoa(mp)
		args := append([]string{"up", "--data-dir", filepath.Join(dir, "up"), "--keys", keys, "--nats-port", strconv.Itoa(np),
			"--mqtt-port", strconv.Itoa(mp), "--monitor-port", "-2", "--listen", s.edge, "--status-every", "0"}, publishArgs(o)...)
		args = append(args, oneAddressFleet...)
		if mosquitto != "" {
			args = append(args, "--mqtt", mosquitto)
		}
		if _, err := s.start(ctx, o, dir, "up", nil, args...); err != nil {
			return s, err
		}
		// up lets no anonymous client in: the bench logs in as the roles
		// whose work it measures, with the passwords up generated.
		creds := filepath.Join(dir, "up", bus.CredentialsDir)
		login := func(rawURL string, r bus.Role) (string, error) {
			pw, err := bus.ReadCredential(creds, r)
			if err != nil {
				return "", fmt.Errorf("bench: %s credentials of up: %w", r, err)
			}
			u, err := url.Parse(rawURL)
			if err != nil {
				return "", err
			}
			u.User = url.UserPassword(string(r), pw)
			return u.String(), nil
		}
		mqttURL := s.mqttURL
		var errN, errW, errR error
		s.natsURL, errN = login(s.natsURL, bus.RoleAdmin)
		if mosquitto != "" {
			// The bench's Mosquitto is its own, on loopback, for anyone.
			s.mqttURL = mosquitto
			return s, errN
		}
		s.mqttURL, errW = login(mqttURL, bus.RolePublish)
		s.mqttReadURL, errR = login(mqttURL, bus.RoleDashboard)
		return s, errors.Join(errN, errW, errR)
	case ModeProcess:
		if o.Cluster > 1 {
			// A JetStream cluster of nats-server processes, streams and
			// buckets replicated on every node.
			err = s.startCluster(ctx, o, dir)
		} else {
			// nats-server (JetStream, MQTT) in a process of its own, so
			// that its CPU time is reported apart from the simulator's.
			err = s.startNATS(ctx, o, dir, mosquitto == "")
		}
		if err != nil {
			return s, err
		}
		if mosquitto != "" {
			s.mqttURL = mosquitto
		}
	case ModeExternal:
		if o.NATS == "" || o.MQTT == "" {
			return nil, errors.New("bench: external mode needs --nats and --mqtt")
		}
		s.natsURL, s.mqttURL = o.NATS, o.MQTT
	default:
		return nil, fmt.Errorf("bench: unknown mode %q (embedded, process or external)", o.Mode)
	}
	env := []string{"MEDPIPE_NATS=" + s.natsURL}
	if o.Cluster > 1 {
		env = append(env, "MEDPIPE_REPLICAS="+strconv.Itoa(o.Cluster))
	}
	for _, st := range []struct {
		name string
		args []string
	}{
		{"ingest", append([]string{"ingest", "--listen", s.edge, "--raw-batch", strconv.Itoa(ingest.DefaultRawBatch)}, oneAddressFleet...)},
		{"decrypt", decryptArgs(keys)},
		{"publish", append([]string{"publish", "--mqtt", s.mqttURL}, publishArgs(o)...)},
	} {
		if _, err := s.start(ctx, o, dir, st.name, env, st.args...); err != nil {
			return s, err
		}
	}
	return s, nil
}

// decryptArgs are a decrypt process's arguments: the bench's stages are
// all of this build, so decrypt stores readings in batches (and ingest
// frames), as up does.
func decryptArgs(keys string) []string {
	return []string{"decrypt", "--keys", keys, "--readings-batch", strconv.Itoa(decrypt.DefaultReadingsBatch)}
}

// startNATS starts the bench's nats-server as a child process (medpipe
// bench --serve-nats), with an MQTT listener when mqtt is set.
func (s *stack) startNATS(ctx context.Context, o Options, dir string, mqtt bool) error {
	np, err := freePort()
	if err != nil {
		return err
	}
	mp := -2
	if mqtt {
		if mp, err = freePort(); err != nil {
			return err
		}
		s.mqttURL = "tcp://127.0.0.1:" + strconv.Itoa(mp)
	}
	s.natsURL = "nats://127.0.0.1:" + strconv.Itoa(np)
	_, err = s.start(ctx, o, dir, "nats-server", nil, "bench", "--serve-nats", filepath.Join(dir, "jetstream"),
		"--serve-nats-port", strconv.Itoa(np), "--serve-mqtt-port", strconv.Itoa(mp))
	return err
}

// startMosquitto runs mosquitto from PATH on a free loopback port, its
// queue deep enough that it drops nothing for the subscriber.
func (s *stack) startMosquitto(ctx context.Context, dir string) (string, error) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		return "", fmt.Errorf("bench: mosquitto is not on PATH (the drain, --broker mosquitto and --cluster start one; the drain also takes --mqtt): %w", err)
	}
	port, err := freePort()
	if err != nil {
		return "", err
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	text := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 0\nlog_dest stderr\nlog_type error\nlog_type warning\n", port)
	if os.Geteuid() == 0 {
		text = "user root\n" + text // as root it would switch to a user who cannot read dir
	}
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return "", err
	}
	lf, err := os.Create(filepath.Join(dir, "mosquitto.log"))
	if err != nil {
		return "", err
	}
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return "", fmt.Errorf("bench: start mosquitto: %w", err)
	}
	p := &proc{name: "mosquitto", cmd: cmd, log: lf, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	s.procs = append(s.procs, p)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return "tcp://" + addr, nil
		}
		if time.Now().After(deadline) {
			return "", errors.New("bench: mosquitto not listening within 30 s; see " + lf.Name())
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return "", err
		}
	}
}

// startCluster starts o.Cluster nats-server processes (medpipe bench
// --serve-nats) joined by routes, at once: a clustered JetStream server is
// ready only once it has its routes. It returns when JetStream answers.
func (s *stack) startCluster(ctx context.Context, o Options, dir string) error {
	routes := make([]string, o.Cluster)
	var urls []string
	ports, routePorts := make([]int, o.Cluster), make([]int, o.Cluster)
	for i := range routes {
		rp, err1 := freePort()
		np, err2 := freePort()
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		routes[i], ports[i], routePorts[i] = "127.0.0.1:"+strconv.Itoa(rp), np, rp
		urls = append(urls, "nats://127.0.0.1:"+strconv.Itoa(np))
	}
	s.natsURL = strings.Join(urls, ",")
	procs := make([]*proc, o.Cluster)
	for i := range procs {
		p, err := s.launch(o, dir, fmt.Sprintf("nats-server-%d", i+1), nil, "bench", "--serve-nats", filepath.Join(dir, fmt.Sprintf("jetstream-%d", i+1)),
			"--serve-nats-port", strconv.Itoa(ports[i]), "--serve-mqtt-port", "-2", "--serve-name", fmt.Sprintf("n%d", i+1),
			"--serve-cluster-port", strconv.Itoa(routePorts[i]), "--serve-routes", strings.Join(routes, ","))
		if err != nil {
			return err
		}
		procs[i] = p
	}
	for _, p := range procs {
		if err := s.waitHealthy(ctx, p); err != nil {
			return err
		}
	}
	return waitJetStream(ctx, s.natsURL)
}

// waitJetStream waits until the cluster's JetStream answers (it has
// elected a meta leader), for at most a minute.
func waitJetStream(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	nc, js, err := bus.Connect(ctx, bus.ConnectOptions{URLs: url, Name: "medpipe-bench-cluster"})
	if err != nil {
		return err
	}
	defer nc.Close()
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.AccountInfo(actx)
		acancel()
		if err == nil {
			return nil
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return fmt.Errorf("bench: the cluster's JetStream did not answer within a minute: %w", err)
		}
	}
}

// oneAddressFleet lifts the edge's per-address limits: the bench's fleet,
// thousands of devices, connects from one loopback address, which the
// limits would rightly take for a flood.
var oneAddressFleet = []string{"--accept-rate-per-ip", "-1", "--max-preframe-per-ip", "-1", "--penalty", "-1s"}

// start runs one child with its own --http address and waits until its
// /healthz answers.
func (s *stack) start(ctx context.Context, o Options, dir, name string, env []string, args ...string) (*proc, error) {
	p, err := s.launch(o, dir, name, env, args...)
	if err != nil {
		return nil, err
	}
	return p, s.waitHealthy(ctx, p)
}

// launch runs one child with its own --http address, not waiting for it.
func (s *stack) launch(o Options, dir, name string, env []string, args ...string) (*proc, error) {
	h, err := freeAddr()
	if err != nil {
		return nil, err
	}
	lf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(o.Binary, append(args, "--http", h)...)
	cmd.Env = append(os.Environ(), env...)
	if o.Profile != "" {
		cmd.Env = append(cmd.Env, "MEDPIPE_PPROF=true")
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	p := &proc{name: name, http: h, cmd: cmd, log: lf, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	s.procs = append(s.procs, p)
	return p, nil
}

// waitHealthy waits until a launched child's /healthz answers.
func (s *stack) waitHealthy(ctx context.Context, p *proc) error {
	name, lf := p.name, p.log
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + p.http + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			return fmt.Errorf("bench: %s exited at start (%v); see %s", name, err, lf.Name())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: %s not healthy within 60 s; see %s", name, lf.Name())
		}
	}
}

// stop stops every child with SIGTERM (each drains), the servers last.
func (s *stack) stop() {
	var stages, servers []*proc
	for _, p := range s.procs {
		if strings.HasPrefix(p.name, "nats-server") || p.name == "mosquitto" {
			servers = append(servers, p)
		} else {
			stages = append(stages, p)
		}
	}
	stopAll(stages)
	stopAll(servers)
}

func stopAll(procs []*proc) {
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(p.stop)
	}
	wg.Wait()
}

// stop asks the child to stop (SIGTERM), kills it after 20 s, and closes
// its log.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
	}
	p.log.Close()
}

// stopOne stops one child as stop does, and forgets it.
func (s *stack) stopOne(p *proc) {
	p.stop()
	for i, q := range s.procs {
		if q == p {
			s.procs = append(s.procs[:i], s.procs[i+1:]...)
			break
		}
	}
}

// counters scrapes every child's /metrics and sums each metric by name.
func (s *stack) counters() map[string]float64 {
	out := map[string]float64{}
	for _, p := range s.procs {
		resp, err := http.Get("http://" + p.http + "/metrics")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if line == "" || line[0] == '#' {
				continue
			}
			sp := strings.LastIndexByte(line, ' ')
			if sp < 0 {
				continue
			}
			name := line[:sp]
			if i := strings.IndexByte(name, '{'); i >= 0 {
				name = name[:i]
			}
			if v, err := strconv.ParseFloat(line[sp+1:], 64); err == nil {
				out[name] += v
			}
		}
		resp.Body.Close()
	}
	return out
}

// profile saves, from every child, CPU, block and mutex profiles taken over
// d, then the allocation profile and a goroutine snapshot, into dir as
// <process>.{cpu,block,mutex,allocs,goroutine}.pprof; and the bench
// process's own CPU profile over d (the simulator and the subscriber) as
// bench.cpu.pprof.
func (s *stack) profile(ctx context.Context, dir string, d time.Duration) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	secs := int(d.Seconds())
	var wg sync.WaitGroup
	errs := make(chan error, 6*len(s.procs)+1)
	wg.Go(func() { errs <- profileSelf(ctx, filepath.Join(dir, "bench.cpu.pprof"), d) })
	for _, p := range s.procs {
		if p.http == "" { // not ours: mosquitto
			continue
		}
		fetch := func(path, file string) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.http+path, nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("bench: profile %s: %w", p.name, err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("bench: profile %s: %s", p.name, resp.Status)
			}
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, p.name+"."+file+".pprof"), b, 0o644)
			}
			return err
		}
		// The window's profiles at once, so that they cover the same seconds.
		var window sync.WaitGroup
		for _, kind := range []string{"profile", "block", "mutex"} {
			file := kind
			if kind == "profile" {
				file = "cpu"
			}
			window.Go(func() { errs <- fetch(fmt.Sprintf("/debug/pprof/%s?seconds=%d", kind, secs), file) })
		}
		wg.Go(func() {
			window.Wait()
			errs <- fetch("/debug/pprof/allocs", "allocs")
			errs <- fetch("/debug/pprof/goroutine", "goroutine")
		})
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// profileSelf writes the bench process's CPU profile over d into path.
func profileSelf(ctx context.Context, path string, d time.Duration) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return fmt.Errorf("bench: profile the bench process: %w", err)
	}
	defer pprof.StopCPUProfile()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// ProcUsage is one process's resource use.
type ProcUsage struct {
	Name       string  `json:"name"`
	CPUSeconds float64 `json:"cpu_seconds"`
	PeakRSSMB  float64 `json:"peak_rss_mb"`
}

// usage reads CPU time and peak RSS of a process from /proc (Linux).
func usage(name string, pid int) ProcUsage {
	u := ProcUsage{Name: name}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// Fields after the command name, which is in parentheses.
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 {
			f := strings.Fields(string(b)[i+1:])
			if len(f) > 13 {
				ut, _ := strconv.ParseFloat(f[11], 64)
				st, _ := strconv.ParseFloat(f[12], 64)
				u.CPUSeconds = (ut + st) / 100 // USER_HZ
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				u.PeakRSSMB = kb / 1024
			}
		}
	}
	return u
}

// usages reads every child's resource use and the bench process's own.
func (s *stack) usages() []ProcUsage {
	var out []ProcUsage
	for _, p := range s.procs {
		out = append(out, usage(p.name, p.cmd.Process.Pid))
	}
	return append(out, usage(selfUsageName(s), os.Getpid()))
}

// usageSince is each process's CPU between two readings of usages.
func usageSince(before, after []ProcUsage) []ProcUsage {
	was := map[string]float64{}
	for _, u := range before {
		was[u.Name] = u.CPUSeconds
	}
	out := make([]ProcUsage, 0, len(after))
	for _, u := range after {
		u.CPUSeconds -= was[u.Name]
		out = append(out, u)
	}
	return out
}

// selfUsageName names the bench process's own line of usages.
func selfUsageName(*stack) string { return "bench (simulator, subscriber)" }

// readURL is the MQTT URL the bench's subscribers use.
func (s *stack) readURL() string {
	if s.mqttReadURL != "" {
		return s.mqttReadURL
	}
	return s.mqttURL
}
