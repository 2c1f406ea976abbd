package actors_test

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/persistence"
)

// Embedding vigil: a scheduler with a Badger store, watching one TCP
// target, printing its transitions as they become durable.
func Example() {
	ctx := context.Background()
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel)
	dir, _ := os.MkdirTemp("", "vigil-example")
	defer os.RemoveAll(dir)

	store, err := persistence.Open(dir, persistence.Options{Logger: log})
	if err != nil {
		panic(err)
	}
	defer store.Close() // the caller closes the store, after the scheduler
	s, err := actors.New(ctx, actors.WithLogger(log), actors.WithStore(store), actors.WithProbeBudget(256))
	if err != nil {
		panic(err)
	}
	defer s.Close(ctx)     // stops timers, cancels probes, stops actors, flushes the store
	sub := s.Subscribe(64) // transitions, durable before they arrive
	defer sub.Close()

	workload, _ := net.Listen("tcp", "127.0.0.1:0") // something to watch
	port := workload.Addr().(*net.TCPAddr).Port
	one := 1
	spec := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: port}, Interval: "1s", StartPeriod: "0s", FailureThreshold: &one}}
	if _, _, err := s.Put(ctx, "vm-42", spec); err != nil { // returns once the spec is durable
		panic(err)
	}
	show := func(ev actors.Event) { fmt.Printf("%s: %s -> %s %q\n", ev.InstanceID, ev.From, ev.To, ev.Reason) }
	show(<-sub.C) // registered: starting
	show(<-sub.C) // the first probe succeeded
	workload.Close()
	show(<-sub.C) // the next one is refused
	// Output:
	// vm-42: unknown -> starting "registered"
	// vm-42: starting -> healthy ""
	// vm-42: healthy -> unhealthy "connection_refused"
}
