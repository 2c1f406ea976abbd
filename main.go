// Command vigil is the health-probe scheduler for virtual machines.
//
//	vigil serve     run the scheduler with its HTTP API
//	vigil agent     run the guest agent inside a VM
//	vigil loadtest  drive an embedded scheduler with a synthetic fleet
//	vigil version   print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/loadtest"
	"github.com/vigilhq/vigil/persistence"
	"github.com/vigilhq/vigil/probes/agent"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "vigil", version)
		return 0
	case "serve":
		defaultGC()
		return serve(args[1:], stderr)
	case "agent":
		return agentCmd(args[1:], stderr)
	case "loadtest":
		defaultGC()
		return loadtestCmd(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "vigil: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

// defaultGCPercent is the garbage collector's target for the scheduler
// process unless GOGC says otherwise. Its live heap is large and long-lived
// (a few KB per instance) while a probe allocates little, so collecting at
// half the live heap instead of all of it costs a little CPU and keeps the
// resident set at about 1.5 times the live heap instead of 2 (as Prometheus
// defaults GOGC to 75 for the same reason).
const defaultGCPercent = 50

func defaultGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(defaultGCPercent)
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: vigil <command> [flags]

commands:
  serve     run the scheduler and its HTTP API
  agent     run the guest agent (inside a VM) that serves exec probes
  loadtest  drive an embedded scheduler with a synthetic fleet and report
  version   print the version
`)
}

// env returns the VIGIL_* environment value of a flag, or def.
func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func newLogger(level, format string, w io.Writer) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("--log-level: %w", err)
	}
	switch format {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format must be json or console (got %q)", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", env("VIGIL_LISTEN", "127.0.0.1:8484"), "address to serve the API on")
	dataDir := fs.String("data-dir", env("VIGIL_DATA_DIR", "vigil-data"), "Badger data directory")
	budgetDefault, _ := strconv.Atoi(env("VIGIL_PROBE_BUDGET", strconv.Itoa(actors.DefaultProbeBudget)))
	budget := fs.Int("probe-budget", budgetDefault, "host-wide cap on probes in flight")
	level := fs.String("log-level", env("VIGIL_LOG_LEVEL", "info"), "debug, info, warn or error")
	format := fs.String("log-format", env("VIGIL_LOG_FORMAT", "json"), "json or console")
	token := fs.String("token", env("VIGIL_TOKEN", ""), "require Authorization: Bearer <token> on the API (not on /healthz, /readyz)")
	insecureDefault, _ := strconv.ParseBool(env("VIGIL_INSECURE", "false"))
	insecure := fs.Bool("insecure", insecureDefault, "allow a non-loopback --listen address without --token")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vigil serve: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	log, err := newLogger(*level, *format, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "vigil serve:", err)
		return 2
	}
	cfg := serveConfig{listen: *listen, dataDir: *dataDir, budget: *budget, token: *token, insecure: *insecure}
	if err := serveUntilSignal(log, cfg); err != nil {
		log.Error().Err(err).Msg("serve_failed")
		return 1
	}
	return 0
}

type serveConfig struct {
	listen, dataDir string
	budget          int
	token           string
	insecure        bool
}

// checkListen refuses a non-loopback address without a token, unless the
// operator insists with --insecure.
func checkListen(c serveConfig) error {
	host, _, err := net.SplitHostPort(c.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", c.listen, err)
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
	if err := checkListen(c); err != nil {
		return err
	}
	if c.budget < 1 {
		return fmt.Errorf("--probe-budget must be at least 1 (got %d)", c.budget)
	}
	listen := c.listen
	store, err := persistence.Open(c.dataDir, persistence.Options{Logger: log.With().Str("component", "store").Logger()})
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
	srv := &http.Server{Addr: listen, Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	srv.RegisterOnShutdown(func() { close(stopping) })
	l, err := net.Listen("tcp", listen)
	if err != nil {
		_ = sched.Close(ctx)
		return err
	}
	log.Info().Str("listen", l.Addr().String()).Str("data_dir", c.dataDir).Bool("auth", c.token != "").Str("version", version).Msg("serving")
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	select {
	case sig := <-sigs:
		log.Info().Str("signal", sig.String()).Msg("shutting_down")
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			_ = sched.Close(ctx)
			return err
		}
	}
	shutdownCtx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn().Err(err).Msg("http_shutdown")
	}
	return sched.Close(shutdownCtx)
}

func agentCmd(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", env("VIGIL_AGENT_LISTEN", agent.DefaultListen), "vsock://:PORT, unix:///path or tcp://host:port")
	maxDefault, _ := strconv.Atoi(env("VIGIL_AGENT_MAX_CONCURRENT", strconv.Itoa(agent.DefaultMaxConcurrent)))
	maxConcurrent := fs.Int("max-concurrent", maxDefault, "commands run at once; more are refused")
	readyFile := fs.String("ready-file", env("VIGIL_AGENT_READY_FILE", ""), "file to create once listening")
	level := fs.String("log-level", env("VIGIL_LOG_LEVEL", "info"), "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(*level, "json", stderr)
	if err != nil {
		fmt.Fprintln(stderr, "vigil agent:", err)
		return 2
	}
	l, err := agent.Listen(*listen)
	if err != nil {
		log.Error().Err(err).Msg("agent_listen_failed")
		return 1
	}
	g := agent.New(log, *maxConcurrent).GRPC()
	if *readyFile != "" {
		if err := os.WriteFile(*readyFile, []byte(l.Addr().String()+"\n"), 0o644); err != nil {
			log.Error().Err(err).Msg("agent_ready_file_failed")
			return 1
		}
	}
	log.Info().Str("listen", l.Addr().String()).Int("max_concurrent", *maxConcurrent).Str("version", version).Msg("agent_ready")
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		g.GracefulStop()
	}()
	if err := g.Serve(l); err != nil {
		log.Error().Err(err).Msg("agent_serve_failed")
		return 1
	}
	return 0
}

func loadtestCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg loadtest.Config
	fs.IntVar(&cfg.Instances, "instances", 1000, "instances in the fleet")
	fs.StringVar(&cfg.Type, "type", "tcp", "probe type: tcp, http, grpc, exec or mixed")
	fs.DurationVar(&cfg.Interval, "interval", 10*time.Second, "probe interval")
	fs.DurationVar(&cfg.Timeout, "timeout", time.Second, "probe timeout")
	fs.DurationVar(&cfg.StartPeriod, "start-period", -1, "start period (default: the policy default)")
	fs.Float64Var(&cfg.Hung, "hung", 0, "fraction of targets that accept and never answer")
	fs.Float64Var(&cfg.Flip, "flip", 0, "fraction of targets that turn unhealthy a third of the way in, and back at two thirds")
	fs.DurationVar(&cfg.Duration, "duration", 30*time.Second, "how long to drive the fleet after registering it")
	fs.StringVar(&cfg.Store, "store", "badger", "memory or badger (in a temp dir unless --data-dir)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "Badger directory (default: a temp dir, removed after)")
	fs.IntVar(&cfg.Budget, "probe-budget", actors.DefaultProbeBudget, "host-wide cap on probes in flight")
	asJSON := fs.Bool("json", false, "print the report as one JSON object on the last line")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the measurement window to this file")
	memProfile := fs.String("memprofile", "", "write a heap profile at the end of the run to this file (and one at the start of the measurement to FILE.start)")
	level := fs.String("log-level", "warn", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(*level, "json", stderr)
	if err != nil {
		fmt.Fprintln(stderr, "vigil loadtest:", err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "vigil loadtest:", err)
		return 2
	}
	cfg.Log, cfg.Progress = log, stderr
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "vigil loadtest: --cpuprofile:", err)
			return 2
		}
		defer f.Close()
		// the measurement window only: registration and the raw loop would
		// drown the steady state
		cfg.AtStart = func() {
			if err := pprof.StartCPUProfile(f); err != nil {
				fmt.Fprintln(stderr, "vigil loadtest: --cpuprofile:", err)
			}
		}
	}
	if *memProfile != "" {
		// a heap profile at the start too: allocations of the window are the
		// difference (go tool pprof -diff_base FILE.start FILE)
		atStart := cfg.AtStart
		cfg.AtStart = func() {
			if f, err := os.Create(*memProfile + ".start"); err == nil {
				_ = pprof.WriteHeapProfile(f)
				_ = f.Close()
			}
			if atStart != nil {
				atStart()
			}
		}
	}
	cfg.AtEnd = func() {
		if *cpuProfile != "" {
			pprof.StopCPUProfile()
		}
		if *memProfile == "" {
			return
		}
		if f, err := os.Create(*memProfile); err == nil {
			runtime.GC()
			_ = pprof.WriteHeapProfile(f)
			_ = f.Close()
		}
	}
	rep, err := loadtest.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "vigil loadtest:", err)
		return 1
	}
	if *asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteTable(stdout)
	}
	if err != nil {
		return 1
	}
	return 0
}
