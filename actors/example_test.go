package actors_test

import (
	"context"
	"fmt"
	"net"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// Embedding vigil: build a scheduler, register an instance, probe it.
func Example() {
	l, _ := net.Listen("tcp", "127.0.0.1:0") // a workload to watch
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	ctx := context.Background()
	s, err := actors.New(ctx, actors.WithProbeBudget(256))
	if err != nil {
		panic(err)
	}
	defer s.Close(ctx)

	spec := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: port}}}
	if _, _, err := s.Put(ctx, "vm-42", spec); err != nil {
		panic(err)
	}
	// joins the first probe if it is still in flight, else runs another
	result, info, _ := s.ProbeNow(ctx, "vm-42")
	fmt.Println(result.Outcome, info.Health.Status)
	// Output: success healthy
}
