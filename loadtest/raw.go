package loadtest

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigilhq/vigil/probes"
)

// rawResult is one run of the raw probe loop.
type rawResult struct {
	PerSecond     float64 `json:"per_second"`
	CPUPerProbeUS float64 `json:"cpu_per_probe_us"`
	Probes        uint64  `json:"probes"`
}

// rawCeiling runs the fleet's healthy probes in tight loops, without the
// scheduler, in the process it is called in (the raw role's), and returns
// probes per second and CPU microseconds per probe. The loops go round the
// whole fleet, as the scheduler does: a few thousand targets would keep the
// kernel's per-destination state (routes, TCP metrics) in the cache, which
// a fleet of 100 000 addresses never is.
func rawCeiling(ctx context.Context, f *fleet, cfg Config, d time.Duration, workers int) (rawResult, error) {
	var targets []probes.Prober
	for i := range f.n {
		if !f.healthy(i) {
			continue
		}
		in, err := f.spec(i, cfg).Normalize(f.id(i))
		if err != nil {
			return rawResult{}, err
		}
		p, err := probes.New(in)
		if err != nil {
			return rawResult{}, err
		}
		targets = append(targets, p)
	}
	defer func() {
		for _, p := range targets {
			if c, ok := p.(io.Closer); ok {
				_ = c.Close()
			}
		}
	}()
	if len(targets) == 0 || d <= 0 {
		return rawResult{}, nil
	}
	workers = max(1, min(workers, 4*runtime.GOMAXPROCS(0), len(targets)))
	var count atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	began, cpuBegan := time.Now(), cpuTime()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := w; ; j += workers {
				select {
				case <-stop:
					return
				default:
				}
				pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
				targets[j%len(targets)].Probe(pctx)
				cancel()
				count.Add(1)
			}
		}()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	wall, cpu := time.Since(began), cpuTime()-cpuBegan
	n := count.Load()
	if n == 0 {
		return rawResult{}, nil
	}
	return rawResult{PerSecond: float64(n) / wall.Seconds(), CPUPerProbeUS: float64(cpu.Microseconds()) / float64(n), Probes: n}, nil
}

// rawPhase is one run of the raw loop in its own process, against the
// target process, with what it cost the targets and what the namespace's
// listening sockets dropped meanwhile.
type rawPhase struct {
	rawResult
	TargetCPUPerProbeUS float64
	Overflows, Drops    int64
}

func runRaw(ctx context.Context, cfg Config, f *fleet, tp *proc, d time.Duration, workers int) (rawPhase, error) {
	cc := childOf(roleRaw, cfg)
	cc.Ports, cc.For, cc.Workers = f.ports, d, workers
	before, err := tp.call(request{Cmd: "cpu"})
	if err != nil {
		return rawPhase{}, err
	}
	overflows, drops := listenCounters()
	p, first, err := startProcCtx(ctx, cfg, cc)
	if err != nil {
		return rawPhase{}, err
	}
	p.close()
	after, err := tp.call(request{Cmd: "cpu"})
	if err != nil {
		return rawPhase{}, err
	}
	out := rawPhase{rawResult: *first.Raw}
	out.Overflows, out.Drops = countersSince(overflows, drops)
	if out.Probes > 0 {
		out.TargetCPUPerProbeUS = float64((after.CPU - before.CPU).Microseconds()) / float64(out.Probes)
	}
	return out, nil
}

// startProcCtx is startProc for a child that answers once: killed if ctx
// ends first.
func startProcCtx(ctx context.Context, cfg Config, cc childConfig) (*proc, reply, error) {
	p, err := spawn(cfg, cc)
	if err != nil {
		return nil, reply{}, err
	}
	type answer struct {
		rep reply
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		rep, err := p.read()
		ch <- answer{rep, err}
	}()
	select {
	case a := <-ch:
		if a.err == nil && a.rep.Raw == nil {
			a.err = fmt.Errorf("the load test's %s process answered nothing", cc.Role)
		}
		if a.err != nil {
			p.kill()
			return nil, reply{}, a.err
		}
		return p, a.rep, nil
	case <-ctx.Done():
		p.kill()
		<-ch
		return nil, reply{}, ctx.Err()
	}
}
