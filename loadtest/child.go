package loadtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The load test's own processes are the vigil binary's hidden
// `loadtest-targets` command in one of three roles:
//
//   - targets: serves the fleet's targets and the notifier receivers and
//     records what arrives; it answers commands, one JSON line each way,
//     on its stdin and stdout, and exits when its stdin closes;
//   - raw: the raw probe loop against those targets, once; it writes its
//     result and exits;
//   - hog: spins a share of every CPU until its stdin closes.
//
// The first line on a child's stdin is its childConfig. Every child dies
// with the load test (Pdeathsig), however the load test ends.
const (
	roleTargets = "targets"
	roleRaw     = "raw"
	roleHog     = "hog"
)

// ChildCommand is the hidden command of the vigil binary that runs the
// load test's own processes.
const ChildCommand = "loadtest-targets"

// childConfig is what a child is told.
type childConfig struct {
	Role        string        `json:"role"`
	Instances   int           `json:"instances"`
	Type        string        `json:"type"`
	Interval    time.Duration `json:"interval"`
	Timeout     time.Duration `json:"timeout"`
	StartPeriod time.Duration `json:"start_period"`
	Hung        float64       `json:"hung"`
	Flip        float64       `json:"flip"`
	Condition   string        `json:"condition,omitempty"`
	Notifiers   int           `json:"notifiers,omitempty"`
	Binary      string        `json:"binary,omitempty"`
	// raw: where the targets are, for how long, with how many loops
	Ports   ports         `json:"ports"`
	For     time.Duration `json:"for,omitempty"`
	Workers int           `json:"workers,omitempty"`
	// hog: the share of every CPU to spin
	Share float64 `json:"share,omitempty"`
}

func childOf(role string, cfg Config) childConfig {
	return childConfig{Role: role, Instances: cfg.Instances, Type: cfg.Type, Interval: cfg.Interval, Timeout: cfg.Timeout,
		StartPeriod: cfg.StartPeriod, Hung: cfg.Hung, Flip: cfg.Flip, Condition: cfg.Condition, Notifiers: cfg.Notifiers,
		Binary: cfg.Binary}
}

func (c childConfig) config() Config {
	return Config{Instances: c.Instances, Type: c.Type, Interval: c.Interval, Timeout: c.Timeout, StartPeriod: c.StartPeriod,
		Hung: c.Hung, Flip: c.Flip, Condition: c.Condition, Notifiers: c.Notifiers, Binary: c.Binary}
}

// request is a command to the target process.
type request struct {
	Cmd  string `json:"cmd"` // begin, end, down, probed, peek, cpu
	Down bool   `json:"down,omitempty"`
}

// reply is a child's answer; every one carries the child's CPU time so far.
type reply struct {
	Error     string        `json:"error,omitempty"`
	CPU       time.Duration `json:"cpu_ns"`
	Ports     *ports        `json:"ports,omitempty"`
	Receivers []string      `json:"receivers,omitempty"`
	// healthy instances and all instances with at least one arrival
	ProbedHealthy int           `json:"probed_healthy,omitempty"`
	Probed        int           `json:"probed,omitempty"`
	Report        *TargetReport `json:"report,omitempty"`
	Raw           *rawResult    `json:"raw,omitempty"`
}

// Child runs one of the load test's own processes: its config is the first
// line of stdin, its answers go to stdout. It returns the exit code.
func Child(stdin io.Reader, stdout io.Writer) int {
	in := bufio.NewReader(stdin)
	dec, enc := json.NewDecoder(in), json.NewEncoder(stdout)
	var cc childConfig
	if err := dec.Decode(&cc); err != nil {
		fmt.Fprintln(os.Stderr, "vigil loadtest-targets: this command is the load test's own; read its config:", err)
		return 2
	}
	switch cc.Role {
	case roleTargets:
		return serveTargets(cc, dec, enc)
	case roleRaw:
		f := newFleet(cc.config())
		f.ports = cc.Ports
		raw, err := rawCeiling(context.Background(), f, cc.config(), cc.For, cc.Workers)
		rep := reply{Raw: &raw, CPU: cpuTime()}
		if err != nil {
			rep = reply{Error: err.Error()}
		}
		if enc.Encode(rep) != nil || err != nil {
			return 1
		}
		return 0
	case roleHog:
		hog(cc.Share, dec.Buffered(), in)
		return 0
	}
	fmt.Fprintf(os.Stderr, "vigil loadtest-targets: unknown role %q\n", cc.Role)
	return 2
}

func serveTargets(cc childConfig, dec *json.Decoder, enc *json.Encoder) int {
	t, err := startTargets(cc.config())
	if err != nil {
		_ = enc.Encode(reply{Error: err.Error()})
		return 1
	}
	defer t.close()
	if err := enc.Encode(reply{Ports: &t.f.ports, Receivers: t.receivers, CPU: cpuTime()}); err != nil {
		return 1
	}
	var cpuBegan time.Duration
	for {
		var req request
		if err := dec.Decode(&req); err != nil {
			return 0 // the load test is done with us
		}
		var rep reply
		switch req.Cmd {
		case "begin":
			cpuBegan = cpuTime()
			t.begin()
		case "end":
			r := t.end()
			cpu := cpuTime() - cpuBegan
			r.CPUPercent = 100 * cpu.Seconds() / max(r.WindowS, 1e-9)
			if n := r.ArrivalsHealthy + r.ArrivalsHung + r.ArrivalsFlip + r.Strangers; n > 0 {
				r.CPUPerArrivalUS = float64(cpu.Microseconds()) / float64(n)
			}
			r.RSSBytes = rss()
			rep.Report = &r
		case "peek":
			r := t.rec.peek()
			rep.Report = &r
		case "down":
			if err := t.setDown(req.Down); err != nil {
				rep.Error = err.Error()
			}
		case "probed":
			rep.ProbedHealthy, rep.Probed = t.rec.probed()
		case "cpu":
		default:
			rep.Error = fmt.Sprintf("unknown command %q", req.Cmd)
		}
		rep.CPU = cpuTime()
		if err := enc.Encode(rep); err != nil {
			return 1
		}
	}
}

// hog spins share of every CPU, in 10 ms periods (the threads a period
// apart in phase), until in ends. Each thread counts the CPU time it got,
// not the time that passed: on a busy machine it still takes its share
// while the period leaves room.
func hog(share float64, buffered, in io.Reader) {
	stop := make(chan struct{})
	n := runtime.NumCPU()
	const period = 10 * time.Millisecond
	on := time.Duration(share * float64(period))
	for k := range n {
		go func() {
			runtime.LockOSThread()
			time.Sleep(time.Duration(k) * period / time.Duration(n))
			for next := time.Now(); ; {
				select {
				case <-stop:
					return
				default:
				}
				next = next.Add(period)
				for from := threadCPU(); threadCPU()-from < on && time.Until(next) > 0; {
				}
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				} else {
					next = time.Now()
				}
			}
		}()
	}
	_, _ = io.Copy(io.Discard, io.MultiReader(buffered, in))
	close(stop)
}

// threadCPU is the calling thread's CPU time.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// proc is one of the load test's children, seen from the load test.
type proc struct {
	name string
	cmd  *exec.Cmd
	in   *os.File // the write end of its stdin
	out  *os.File // the read end of its stdout
	dec  *json.Decoder
	enc  *json.Encoder
	done <-chan struct{}
}

// startProc starts a child in role cc.Role and reads its first answer
// (none for a hog).
func startProc(cfg Config, cc childConfig) (*proc, reply, error) {
	p, err := spawn(cfg, cc)
	if err != nil || cc.Role == roleHog {
		return p, reply{}, err
	}
	first, err := p.read()
	if err != nil {
		p.kill()
		return nil, reply{}, err
	}
	return p, first, nil
}

// spawn starts a child in role cc.Role and tells it cc.
func spawn(cfg Config, cc childConfig) (*proc, error) {
	bin, err := cfg.binary()
	if err != nil {
		return nil, err
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	cmd := exec.Command(bin, ChildCommand)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, os.Stderr
	done, err := launch(cmd)
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("start the load test's %s process (%s %s): %w", cc.Role, bin, ChildCommand, err)
	}
	p := &proc{name: cc.Role, cmd: cmd, in: inW, out: outR, dec: json.NewDecoder(outR), enc: json.NewEncoder(inW), done: done}
	if err := p.enc.Encode(cc); err != nil {
		p.kill()
		return nil, fmt.Errorf("the load test's %s process: %w", cc.Role, err)
	}
	return p, nil
}

func (p *proc) read() (reply, error) {
	var rep reply
	if err := p.dec.Decode(&rep); err != nil {
		return reply{}, fmt.Errorf("the load test's %s process: %w", p.name, err)
	}
	if rep.Error != "" {
		return rep, fmt.Errorf("the load test's %s process: %s", p.name, rep.Error)
	}
	return rep, nil
}

// call sends a command and reads the answer.
func (p *proc) call(req request) (reply, error) {
	if err := p.enc.Encode(req); err != nil {
		return reply{}, fmt.Errorf("the load test's %s process: %w", p.name, err)
	}
	return p.read()
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// close ends the child: its stdin closes, and it has 10 s to exit before it
// is killed.
func (p *proc) close() {
	_ = p.in.Close()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	_ = p.out.Close()
}

// kill ends the child at once.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
	_ = p.in.Close()
	_ = p.out.Close()
}

// launch starts cmd so that it dies with the load test: the kernel sends it
// SIGKILL when the thread that started it ends (Pdeathsig), and that thread
// is kept for as long as the child runs — a goroutine locked to it starts
// the child and waits for it (the runtime ends a thread only when a
// goroutine locked to it exits). done closes once the child has exited and
// been waited for; nobody else may call cmd.Wait.
func launch(cmd *exec.Cmd) (done <-chan struct{}, err error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	started := make(chan error, 1)
	d := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			runtime.UnlockOSThread()
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(d)
		// returning locked ends the thread: its child is gone already
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return d, nil
}

// binary is the vigil binary the load test's processes run.
func (c *Config) binary() (string, error) {
	if c.Binary != "" {
		return c.Binary, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("the vigil binary for the load test's processes: %w", err)
	}
	return exe, nil
}
