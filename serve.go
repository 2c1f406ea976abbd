package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/persistence"
)

type serveConfig struct {
	listen, dataDir string
	budget          int
	token           string
	insecure        bool
}

func serve(args []string, stdout, stderr io.Writer) int {
	cmd := newCommand("serve", "Run the scheduler and its HTTP API.")
	listen := cmd.String("listen", "VIGIL_LISTEN", "127.0.0.1:8484", "ADDR", "address to serve the API on: host:port, or unix:///path for a Unix socket")
	dataDir := cmd.String("data-dir", "VIGIL_DATA_DIR", "vigil-data", "DIR", "Badger data directory")
	budget := cmd.Int("probe-budget", "VIGIL_PROBE_BUDGET", actors.DefaultProbeBudget, "host-wide cap on probes in flight")
	level := cmd.Choice("log-level", "VIGIL_LOG_LEVEL", "info", "LEVEL", "debug, info, warn or error", logLevels...)
	format := cmd.Choice("log-format", "VIGIL_LOG_FORMAT", "json", "FORMAT", "json or console", "json", "console")
	token := cmd.String("token", "VIGIL_TOKEN", "", "TOKEN", "require Authorization: Bearer <token> on the API (not on /healthz, /readyz)")
	insecure := cmd.Bool("insecure", "VIGIL_INSECURE", false, "allow a non-loopback --listen address without --token")
	if err := cmd.parse(args, stdout, stderr); err != nil {
		return exit(err)
	}
	cfg := serveConfig{listen: *listen, dataDir: *dataDir, budget: *budget, token: *token, insecure: *insecure}
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
	return checkListen(c)
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
	badgerLog := log.With().Str("component", "badger").Logger()
	store, err := persistence.Open(c.dataDir, persistence.Options{Logger: log.With().Str("component", "store").Logger(),
		BadgerLogger: &badgerLog})
	if err != nil {
		return err
	}
	defer store.Close()
	metrics := api.NewMetrics()
	metrics.Register(store.Collectors()...)
	ctx := context.Background()
	sched, err := actors.New(ctx, actors.WithLogger(log), actors.WithStore(store), actors.WithProbeBudget(c.budget),
		actors.WithObserver(metrics))
	if err != nil {
		return err
	}
	stopping := make(chan struct{})
	handler := api.New(sched, api.Options{Log: log.With().Str("component", "api").Logger(), Token: c.token,
		Metrics: metrics, Shutdown: stopping})
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
	sd := startNotify(log, sched)
	defer sd.stop()

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
	shutdownCtx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn().Err(err).Msg("http_shutdown")
	}
	return sched.Close(shutdownCtx)
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

func startNotify(log zerolog.Logger, sched *actors.Scheduler) *notifier {
	n := &notifier{log: log, done: make(chan struct{}), exit: make(chan struct{})}
	if os.Getenv("NOTIFY_SOCKET") == "" {
		close(n.exit)
		return n
	}
	watchdog, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn().Err(err).Msg("systemd_watchdog_invalid")
	}
	go n.run(sched, watchdog)
	return n
}

func (n *notifier) run(sched *actors.Scheduler, watchdog time.Duration) {
	defer close(n.exit)
	var pings <-chan time.Time
	if watchdog > 0 {
		t := time.NewTicker(watchdog / 2)
		defer t.Stop()
		pings = t.C
	}
	ready := time.NewTicker(readyPoll)
	defer ready.Stop()
	for {
		select {
		case <-n.done:
			return
		case <-ready.C:
			if !sched.Ready() {
				continue
			}
			ready.Stop()
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
