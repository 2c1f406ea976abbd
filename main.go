// Command vigil is the health-probe scheduler for virtual machines.
//
//	vigil serve     run the scheduler with its HTTP API
//	vigil agent     run the guest agent inside a VM
//	vigil loadtest  drive an embedded scheduler with a synthetic fleet
//	vigil version   print the version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/loadtest"
	"github.com/vigilhq/vigil/probes/agent"
)

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return 2
	}
	switch args[0] {
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "vigil", version)
		return 0
	case "serve":
		defaultGC()
		return serve(args[1:], stdout, stderr)
	case "agent":
		return agentCmd(args[1:], stdout, stderr)
	case "loadtest":
		defaultGC()
		return loadtestCmd(args[1:], stdout, stderr)
	case loadtest.ChildCommand: // hidden: the load test's own processes (targets, raw loop, CPU hog)
		return loadtest.Child(os.Stdin, stdout)
	case "help", "-h", "--help":
		printUsage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "vigil: unknown command %q\n", args[0])
	printUsage(stderr)
	return 2
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, `usage: vigil <command> [flags]

commands:
  serve     run the scheduler and its HTTP API
  agent     run the guest agent (inside a VM) that serves exec probes
  loadtest  drive an embedded scheduler with a synthetic fleet and report
  version   print the version

'vigil <command> --help' lists a command's flags and their VIGIL_* variables.
`)
}

func agentCmd(args []string, stdout, stderr io.Writer) int {
	cmd := newCommand("agent", "Run the guest agent inside a VM: it serves exec probes to the host over vsock.")
	listen := cmd.String("listen", "VIGIL_AGENT_LISTEN", agent.DefaultListen, "ADDR", "vsock://:PORT, unix:///path or tcp://host:port")
	maxConcurrent := cmd.Int("max-concurrent", "VIGIL_AGENT_MAX_CONCURRENT", agent.DefaultMaxConcurrent, "commands run at once; more are refused")
	readyFile := cmd.String("ready-file", "VIGIL_AGENT_READY_FILE", "", "PATH", "file to create once listening")
	level := cmd.Choice("log-level", "VIGIL_LOG_LEVEL", "info", "LEVEL", "debug, info, warn or error", logLevels...)
	if err := cmd.parse(args, stdout, stderr); err != nil {
		return exit(err)
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
	cmd := newCommand("loadtest", "Drive an embedded scheduler, or a vigil serve process (--serve), with a synthetic fleet on loopback whose targets run in a process of their own, and report lag and starvation from inside and as the targets saw them, CPU and memory.")
	var cfg loadtest.Config
	instances := cmd.Int("instances", "", 1000, "instances in the fleet")
	typ := cmd.String("type", "", "tcp", "TYPE", "probe type: tcp, http, grpc, exec or mixed")
	interval := cmd.Duration("interval", "", 10*time.Second, "probe interval")
	timeout := cmd.Duration("timeout", "", time.Second, "probe timeout")
	startPeriod := cmd.Duration("start-period", "", -1, "start period (default: the policy default)")
	hung := cmd.Float("hung", "", 0, "fraction of targets that accept and never answer")
	flip := cmd.Float("flip", "", 0, "fraction of targets that turn unhealthy a third of the way in, and back at two thirds")
	cond := cmd.String("condition", "", "", "CEL", "with --type http or mixed: the HTTP instances' http.condition, a CEL expression over the response")
	duration := cmd.Duration("duration", "", 30*time.Second, "how long to drive the fleet after registering it")
	store := cmd.String("store", "", "badger", "STORE", "memory or badger (in a temp dir unless --data-dir)")
	dataDir := cmd.String("data-dir", "", "", "DIR", "Badger directory (default: a temp dir, removed after)")
	budget := cmd.Int("probe-budget", "", actors.DefaultProbeBudget, "host-wide cap on probes in flight")
	asJSON := cmd.Bool("json", "", false, "print the report as one JSON object on the last line")
	cpuProfile := cmd.String("cpuprofile", "", "", "FILE", "write a CPU profile of the measurement window to this file")
	memProfile := cmd.String("memprofile", "", "", "FILE", "write a heap profile at the end of the run to this file (and one at the start of the measurement to FILE.start)")
	level := cmd.Choice("log-level", "", "warn", "LEVEL", "debug, info, warn or error", logLevels...)
	notifiers := cmd.Int("notifiers", "", 0, "deliver the event log to this many notifiers: all but one to live receivers in the target process (timed), one to a receiver that is down")
	notifierParallel := cmd.Int("notifier-parallel", "", 0, "with --notifiers: the live notifiers' parallel, how many instances' events each delivers at once (default: the notifier's default, 1)")
	serveMode := cmd.Bool("serve", "", false, "measure a vigil serve process (Badger in a temp dir) driven over its API, instead of an embedded scheduler")
	apiClients := cmd.Int("api-clients", "", 0, "with --serve: this many concurrent API clients issue reads and writes through the window")
	apiMix := cmd.String("api-mix", "", loadtest.DefaultAPIMix, "MIX", "with --api-clients: the weights of get, list, summary, patch and put")
	rawFor := cmd.Duration("raw-for", "", 0, "how long each raw probe loop runs, before and after the window (default: a quarter of --duration, at most 5s)")
	hogShare := cmd.Float("hog", "", 0, "a CPU hog in another process takes this share of the machine (all its CPUs) through the window, e.g. 0.2")
	fleetNodes := cmd.Int("fleet-nodes", "", 0, "run N vigil serve nodes on one etcd (and a standalone one to compare), --instances each, TCP")
	moves := cmd.Int("moves", "", 100, "with --fleet-nodes: moves to time")
	kills := cmd.Int("kills", "", 3, "with --fleet-nodes: nodes to kill and restart, timing unknown-everywhere")
	queries := cmd.Int("queries", "", 200, "with --fleet-nodes: fleet summaries and fleet pages to time")
	if err := cmd.parse(args, stdout, stderr); err != nil {
		return exit(err)
	}
	if *fleetNodes > 0 {
		return fleetNodesCmd(loadtest.NodesConfig{Nodes: *fleetNodes, PerNode: *instances, Interval: *interval, Timeout: *timeout,
			Unhealthy: *flip, Window: *duration, Queries: *queries, Moves: *moves, Kills: *kills}, *asJSON, stdout, stderr)
	}
	cfg.Instances, cfg.Type, cfg.Interval, cfg.Timeout, cfg.StartPeriod = *instances, *typ, *interval, *timeout, *startPeriod
	cfg.Hung, cfg.Flip, cfg.Duration, cfg.Store, cfg.DataDir, cfg.Budget = *hung, *flip, *duration, *store, *dataDir, *budget
	cfg.Notifiers, cfg.NotifierParallel = *notifiers, *notifierParallel
	cfg.Serve, cfg.APIClients, cfg.APIMix, cfg.Hog, cfg.RawFor = *serveMode, *apiClients, *apiMix, *hogShare, *rawFor
	cfg.Condition = *cond
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

func fleetNodesCmd(cfg loadtest.NodesConfig, asJSON bool, stdout, stderr io.Writer) int {
	bin, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "vigil loadtest:", err)
		return 1
	}
	cfg.Binary, cfg.Progress = bin, stderr
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := loadtest.RunNodes(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "vigil loadtest:", err)
		return 1
	}
	if asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteTable(stdout)
	}
	if err != nil {
		return 1
	}
	return 0
}
