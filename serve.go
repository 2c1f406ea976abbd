package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/act"
	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/fleet"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/persistence"
	"github.com/vigilhq/vigil/probes"
	"github.com/vigilhq/vigil/ui"
)

type serveConfig struct {
	listen, dataDir string
	budget          int
	token           string
	insecure        bool
	// fleet mode, when etcd is set
	etcd       []string
	node       string
	peerListen string
	peerToken  string
	incidents  health.IncidentRules
	// probeSource is --probe-source-ip, checked by check
	probeSource string
	// pprofListen is --pprof-listen: Go's profiles, on loopback only
	pprofListen string
}

func serve(args []string, stdout, stderr io.Writer) int {
	cmd := newCommand("serve", "Run the scheduler and its HTTP API.")
	listen := cmd.String("listen", "VIGIL_LISTEN", "127.0.0.1:8484", "ADDR", "address to serve the API on: host:port, or unix:///path for a Unix socket")
	dataDir := cmd.String("data-dir", "VIGIL_DATA_DIR", "vigil-data", "DIR", "Badger data directory")
	budget := cmd.Int("probe-budget", "VIGIL_PROBE_BUDGET", actors.DefaultProbeBudget, "host-wide cap on probes in flight")
	probeSource := cmd.String("probe-source-ip", "VIGIL_PROBE_SOURCE_IP", "", "IP", "local address http, tcp and grpc probes connect from, for targets of its family (an instance's network.source_ip wins)")
	level := cmd.Choice("log-level", "VIGIL_LOG_LEVEL", "info", "LEVEL", "debug, info, warn or error", logLevels...)
	format := cmd.Choice("log-format", "VIGIL_LOG_FORMAT", "json", "FORMAT", "json or console", "json", "console")
	token := cmd.String("token", "VIGIL_TOKEN", "", "TOKEN", "require Authorization: Bearer <token> on the API (not on /healthz, /readyz)")
	insecure := cmd.Bool("insecure", "VIGIL_INSECURE", false, "allow a non-loopback --listen address without --token")
	etcd := cmd.String("etcd", "VIGIL_ETCD", "", "URLS", "etcd client URLs, comma-separated: run as a node of a fleet")
	node := cmd.String("node", "VIGIL_NODE", defaultNodeName(), "NAME", "this node's name in the fleet: 1-63 of a-z, 0-9, -")
	peerListen := cmd.String("peer-listen", "VIGIL_PEER_LISTEN", "", "HOST:PORT", "address for node-to-node traffic, advertised to the other nodes")
	peerToken := cmd.String("peer-token", "VIGIL_PEER_TOKEN", "", "TOKEN", "the fleet's secret for node-to-node traffic (required off loopback)")
	incFraction := cmd.Float("incident-fraction", "VIGIL_INCIDENT_FRACTION", health.DefaultIncidentRules.Fraction,
		"an incident opens when this fraction of the node's active instances turns unhealthy together")
	incMin := cmd.Int("incident-min", "VIGIL_INCIDENT_MIN", health.DefaultIncidentRules.Min, "... and at least this many")
	incWindow := cmd.Duration("incident-window", "VIGIL_INCIDENT_WINDOW", health.DefaultIncidentRules.Window, "... within this window")
	pprofListen := cmd.String("pprof-listen", "VIGIL_PPROF_LISTEN", "", "HOST:PORT",
		"serve Go's profiles (net/http/pprof, /debug/pprof/) on this loopback address, without authentication")
	if err := cmd.parse(args, stdout, stderr); err != nil {
		return exit(err)
	}
	cfg := serveConfig{pprofListen: *pprofListen, listen: *listen, dataDir: *dataDir, budget: *budget, token: *token, insecure: *insecure,
		node: *node, peerListen: *peerListen, peerToken: *peerToken,
		incidents: health.IncidentRules{Fraction: *incFraction, Min: *incMin, Window: *incWindow}}
	cfg.probeSource = *probeSource
	for _, u := range strings.Split(*etcd, ",") {
		if u = strings.TrimSpace(u); u != "" {
			cfg.etcd = append(cfg.etcd, u)
		}
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintln(stderr, "vigil serve:", err)
		return 2
	}
	log, err := newLogger(*level, *format, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "vigil serve:", err)
		return 2
	}
	if err := serveUntilSignal(log, cfg); err != nil {
		log.Error().Err(err).Msg("serve_failed")
		return 1
	}
	return 0
}

// check refuses settings vigil cannot serve with.
func (c serveConfig) check() error {
	if c.budget < 1 {
		return fmt.Errorf("--probe-budget must be at least 1 (got %d)", c.budget)
	}
	if err := checkListen(c); err != nil {
		return err
	}
	if c.pprofListen != "" {
		ap, err := netip.ParseAddrPort(c.pprofListen)
		if err != nil || !ap.Addr().IsLoopback() {
			return fmt.Errorf("--pprof-listen must be a loopback address and port, as 127.0.0.1:6060 (got %q): profiles are not for the network", c.pprofListen)
		}
	}
	if c.probeSource != "" && !localAddr(c.probeSource) {
		return fmt.Errorf("--probe-source-ip must be an IPv4 or IPv6 address of this host (got %q)", c.probeSource)
	}
	switch r := c.incidents; {
	case r.Fraction <= 0 || r.Fraction > 1:
		return fmt.Errorf("--incident-fraction must be above 0 and at most 1 (got %g)", r.Fraction)
	case r.Min < 1:
		return fmt.Errorf("--incident-min must be at least 1 (got %d)", r.Min)
	case r.Window < time.Second:
		return fmt.Errorf("--incident-window must be at least 1s (got %s)", r.Window)
	}
	if len(c.etcd) == 0 {
		return nil
	}
	if err := fleet.ValidName(c.node); err != nil {
		return err
	}
	if c.peerListen == "" {
		return errors.New("--peer-listen is required with --etcd: the address other nodes reach this one at")
	}
	host, _, err := net.SplitHostPort(c.peerListen)
	if err != nil {
		return fmt.Errorf("--peer-listen %q must be host:port: %w", c.peerListen, err)
	}
	if ip := net.ParseIP(host); c.peerToken == "" && host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--peer-listen %s is not a loopback address: set --peer-token (VIGIL_PEER_TOKEN), the fleet's shared secret", c.peerListen)
	}
	return nil
}

// localAddr reports whether s is one host address this host can bind.
func localAddr(s string) bool {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
		return false
	}
	l, err := net.Listen("tcp", netip.AddrPortFrom(a, 0).String())
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// defaultNodeName is the host name, as a node name.
func defaultNodeName() string {
	h, err := os.Hostname()
	if err != nil {
		return "vigil"
	}
	h, _, _ = strings.Cut(strings.ToLower(h), ".")
	h = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, h)
	if len(h) > 63 {
		h = h[:63]
	}
	if h == "" {
		return "vigil"
	}
	return h
}

// checkListen refuses a non-loopback address without a token, unless the
// operator insists with --insecure. A Unix socket is local: its mode and
// directory decide who may connect.
func checkListen(c serveConfig) error {
	if strings.HasPrefix(c.listen, api.UnixPrefix) {
		return nil
	}
	host, _, err := net.SplitHostPort(c.listen)
	if err != nil {
		return fmt.Errorf("--listen %q must be host:port or unix:///path: %w", c.listen, err)
	}
	if c.token != "" || c.insecure {
		return nil
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--listen %s is not a loopback address: set --token (VIGIL_TOKEN), or --insecure to serve it without authentication", c.listen)
	}
	return nil
}

func serveUntilSignal(log zerolog.Logger, c serveConfig) error {
	if err := c.check(); err != nil {
		return err
	}
	// a signal during start (opening the store, loading instances) is kept
	// and answered once vigil serves: a clean close, not a kill
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if c.pprofListen != "" {
		// from the start: a slow start (opening the store, loading the
		// instances) is what one may want to profile
		addr, stopProfiles, err := serveProfiles(c.pprofListen)
		if err != nil {
			return err
		}
		defer stopProfiles()
		log.Info().Str("listen", addr).Msg("serving_profiles")
	}
	badgerLog := log.With().Str("component", "badger").Logger()
	store, err := persistence.Open(c.dataDir, persistence.Options{Logger: log.With().Str("component", "store").Logger(),
		BadgerLogger: &badgerLog})
	if err != nil {
		return err
	}
	var stopBy time.Time // set when a stop begins: the whole stop's bound
	defer func() {
		// the last of a stop, after the scheduler's: Badger flushes its
		// memtables and ends its compactions
		began := time.Now()
		err, done := closeBy(store.Close, stopBy, storeCloseFloor)
		if !done {
			// what was acknowledged is synced (the scheduler's flush came
			// first); Badger recovers the rest at the next start as after a
			// crash, which is better than systemd's SIGKILL
			log.Error().Dur("took_ms", time.Since(began)).Msg("store_close_abandoned")
			return
		}
		ev := log.Info()
		if err != nil {
			ev = log.Error().Err(err)
		}
		ev.Dur("took_ms", time.Since(began)).Msg("store_closed")
	}()
	metrics := api.NewMetrics()
	metrics.Register(store.Collectors()...)
	ctx := context.Background()
	name := defaultNodeName()
	if len(c.etcd) > 0 {
		name = c.node
	}
	silences, err := act.NewSilences(store, name, log)
	if err != nil {
		return err
	}
	defer silences.Close()
	restarter := act.NewRestarter(log)
	defer restarter.Close()
	opts := []actors.Option{actors.WithLogger(log), actors.WithStore(store), actors.WithProbeBudget(c.budget),
		actors.WithRestarter(restarter), actors.WithSilencer(silences), actors.WithIncidentRules(c.incidents)}
	if src, err := netip.ParseAddr(c.probeSource); err == nil {
		opts = append(opts, actors.WithProberFactory(probes.Options{Source: src}.New))
	}
	var node *fleet.Node
	if len(c.etcd) > 0 {
		// a signal while etcd is awaited ends the wait
		octx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case sig := <-sigs:
				sigs <- sig
				cancel()
			case <-octx.Done():
			}
		}()
		node, err = fleet.Open(octx, fleet.Config{Name: c.node, Etcd: c.etcd, PeerListen: c.peerListen, PeerToken: c.peerToken,
			APIAddress: c.listen, Log: log, Registerer: metrics.Registry()})
		cancel()
		if err != nil {
			return err
		}
		defer node.Close()
		opts = append(opts, actors.WithAdmit(node.Admit), actors.WithObserver(actors.Tee(metrics, node.Observer())))
	} else {
		opts = append(opts, actors.WithObserver(metrics))
	}
	bootPercent, endBoot := bootGC()
	defer endBoot()
	sched, err := actors.New(ctx, opts...)
	if err != nil {
		return err
	}
	silences.SetScheduler(sched)
	notifiers, err := act.NewNotifiers(store, sched, name, log)
	if err != nil {
		_ = sched.Close(ctx)
		return err
	}
	defer notifiers.Close()
	var reg api.Registry = sched
	if node != nil {
		if err := node.Start(ctx, sched); err != nil {
			_ = sched.Close(ctx)
			return err
		}
		reg = node.Registry()
	}
	stopping := make(chan struct{})
	handler := api.New(reg, api.Options{Log: log.With().Str("component", "api").Logger(), Token: c.token,
		Metrics: metrics, Shutdown: stopping, Behind: sched.Behind, Notifiers: notifiers, Silences: silences, UI: ui.Handler()})
	srv := api.NewServer(handler)
	srv.RegisterOnShutdown(func() { close(stopping) })
	l, err := api.Listen(c.listen)
	if err != nil {
		_ = sched.Close(ctx)
		return err
	}
	log.Info().Str("listen", listenAddr(l)).Str("data_dir", c.dataDir).Bool("auth", c.token != "").Str("version", version).Msg("serving")
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(api.JSONErrors(l)) }()
	sd := startNotify(log, reg.Ready, sched)
	defer sd.stop()
	go releaseMemory(log, reg.Ready, sched.Len, sched.Behind, stopping, bootPercent, endBoot)

	select {
	case sig := <-sigs:
		log.Info().Str("signal", sig.String()).Msg("shutting_down")
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			_ = sched.Close(ctx)
			return err
		}
	}
	sd.stopping()
	began := time.Now()
	stopBy = began.Add(stopTimeout)
	httpCtx, cancel := context.WithTimeout(ctx, httpStopTimeout)
	defer cancel()
	if err := srv.Shutdown(httpCtx); err != nil {
		log.Warn().Err(err).Msg("http_shutdown")
	}
	if node != nil {
		_ = node.Close() // leave the fleet first: the others see this node down at once
	}
	notifiers.Close() // every position made durable
	// the actors have a budget of their own: stopping 100 000 of them, each
	// saving what changed since its last snapshot, takes seconds on a busy
	// host, whatever the requests took
	stopCtx, cancelStop := context.WithTimeout(ctx, actorStopBudget(sched.Len()))
	defer cancelStop()
	if err := sched.Close(stopCtx); err != nil {
		return err
	}
	log.Info().Dur("took_ms", time.Since(began)).Msg("stopped")
	return nil
}

// serveProfiles serves net/http/pprof's handlers on addr until the returned
// func is called; it returns the address it listens on.
func serveProfiles(addr string) (string, func(), error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("--pprof-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return l.Addr().String(), func() { _ = srv.Close() }, nil
}

// How long a stop may take: requests in flight get httpStopTimeout, then
// the actors and the store's flush actorStopTimeout and actorStopEach for
// each actor, at most actorStopMax; Badger's close what remains of
// stopTimeout, at least storeCloseFloor. The whole is within systemd's
// TimeoutStopSec (90 s in deploy/vigil.service).
const (
	httpStopTimeout  = 8 * time.Second
	actorStopTimeout = 20 * time.Second
	actorStopEach    = 40 * time.Microsecond
	actorStopMax     = 70 * time.Second
	stopTimeout      = 85 * time.Second
	storeCloseFloor  = 5 * time.Second
)

// closeBy calls close and waits for it until by, and at least floor; a zero
// by waits as long as it takes. done is false when it stopped waiting.
func closeBy(close func() error, by time.Time, floor time.Duration) (err error, done bool) {
	closed := make(chan error, 1)
	go func() { closed <- close() }()
	var wait <-chan time.Time
	if !by.IsZero() {
		t := time.NewTimer(max(time.Until(by), floor))
		defer t.Stop()
		wait = t.C
	}
	select {
	case err := <-closed:
		return err, true
	case <-wait:
		return nil, false
	}
}

// actorStopBudget is how long stopping n actors may take.
func actorStopBudget(n int) time.Duration {
	return min(actorStopTimeout+time.Duration(n)*actorStopEach, actorStopMax)
}

// listenAddr is the listener's address as --listen writes it.
func listenAddr(l net.Listener) string {
	if l.Addr().Network() == "unix" {
		return api.UnixPrefix + l.Addr().String()
	}
	return l.Addr().String()
}

// notifier tells systemd (Type=notify) about the service: READY=1 once every
// stored instance has its actor (what /readyz says), STOPPING=1 when
// shutdown begins, and WATCHDOG=1 while the actor system answers, when the
// unit sets WatchdogSec. Without NOTIFY_SOCKET it does nothing.
type notifier struct {
	log  zerolog.Logger
	done chan struct{}
	exit chan struct{}
}

// readyPoll is how often the notifier checks readiness before READY=1.
const readyPoll = 20 * time.Millisecond

// releaseMemory returns to the system the heap a burst left free: the
// boot's, once the scheduler is ready (and endBoot has put the collector's
// steady target back), and that of each burst of
// registrations (at least releaseAfter instances, or a tenth of them, then
// releaseQuiet without a change in their number, and probing on time: a
// collection is not what a host behind needs). Either makes garbage of
// several times what it keeps within seconds, and the collector's goal stays
// at the burst's peak until its next cycle, which a steady host runs only
// minutes later: the resident set would stay at the peak meanwhile, and the
// runtime gives pages back only slowly after it.
func releaseMemory(log zerolog.Logger, ready func() bool, count func() int, behind func() bool, stopping <-chan struct{}, bootPercent int, endBoot func()) {
	poll := time.NewTicker(readyPoll)
	defer poll.Stop()
	for !ready() {
		select {
		case <-stopping:
			return
		case <-poll.C:
		}
	}
	endBoot()
	release(log.With().Int("boot_gc_percent", bootPercent).Int("gc_percent", gcPercent()).Logger(), "boot_memory_released")
	poll.Reset(releasePoll)
	base := count()
	last, changed := base, time.Now()
	for {
		select {
		case <-stopping:
			return
		case <-poll.C:
		}
		n := count()
		if n != last {
			last, changed = n, time.Now()
			base = min(base, n)
			continue
		}
		if n-base >= max(releaseAfter, n/10) && time.Since(changed) >= releaseQuiet && !behind() {
			release(log.With().Int("registered", n-base).Logger(), "memory_released")
			base = n
		}
	}
}

// release returns the free heap to the system and logs it as msg.
func release(log zerolog.Logger, msg string) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	began := time.Now()
	debug.FreeOSMemory()
	runtime.ReadMemStats(&after)
	log.Info().Uint64("released_bytes", after.HeapReleased-min(before.HeapReleased, after.HeapReleased)).
		Uint64("heap_in_use_bytes", after.HeapInuse).Int64("took_ms", time.Since(began).Milliseconds()).Msg(msg)
}

// When a burst of registrations has ended (releaseMemory).
const (
	releaseAfter = 1000
	releaseQuiet = 10 * time.Second
	releasePoll  = time.Second
)

func startNotify(log zerolog.Logger, ready func() bool, sched *actors.Scheduler) *notifier {
	n := &notifier{log: log, done: make(chan struct{}), exit: make(chan struct{})}
	if os.Getenv("NOTIFY_SOCKET") == "" {
		close(n.exit)
		return n
	}
	watchdog, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn().Err(err).Msg("systemd_watchdog_invalid")
	}
	go n.run(ready, sched, watchdog)
	return n
}

func (n *notifier) run(ready func() bool, sched *actors.Scheduler, watchdog time.Duration) {
	defer close(n.exit)
	var pings <-chan time.Time
	if watchdog > 0 {
		t := time.NewTicker(watchdog / 2)
		defer t.Stop()
		pings = t.C
	}
	poll := time.NewTicker(readyPoll)
	defer poll.Stop()
	for {
		select {
		case <-n.done:
			return
		case <-poll.C:
			if !ready() {
				continue
			}
			poll.Stop()
			n.send(daemon.SdNotifyReady)
			n.log.Info().Msg("systemd_ready")
		case <-pings:
			ctx, cancel := context.WithTimeout(context.Background(), watchdog/2)
			err := sched.Ping(ctx)
			cancel()
			if err != nil {
				n.log.Warn().Err(err).Msg("systemd_watchdog_withheld")
				continue
			}
			n.send(daemon.SdNotifyWatchdog)
		}
	}
}

func (n *notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn().Err(err).Str("state", state).Msg("systemd_notify_failed")
	}
}

// stopping says STOPPING=1 and ends the notifier's loop.
func (n *notifier) stopping() {
	n.stop()
	if os.Getenv("NOTIFY_SOCKET") != "" {
		n.send(daemon.SdNotifyStopping)
	}
}

func (n *notifier) stop() {
	select {
	case <-n.done:
	default:
		close(n.done)
	}
	<-n.exit
}
