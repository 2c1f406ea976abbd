package loadtest

import (
	"context"
	"fmt"
	"net"

	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/act"
	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/client"
)

// The notifiers of --notifiers deliver the event log to the live receivers
// the target process serves (which time each delivery), and one to a port
// nobody listens on (its retries go on all run long): the process under
// test pays for its side of each delivery only.

// deadURL is the address of a receiver that is down: a port just closed.
func deadURL() (string, error) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer dead.Close()
	return "http://" + dead.Addr().String() + "/", nil
}

// startNotifiers runs the embedded scheduler's notifiers.
func startNotifiers(s *actors.Scheduler, kv act.KV, receivers []string, parallel int, log zerolog.Logger) (func(), error) {
	ns, err := act.NewNotifiers(kv, s, "loadtest", log)
	if err != nil {
		return nil, err
	}
	down, err := deadURL()
	if err != nil {
		ns.Close()
		return nil, err
	}
	if _, _, err := ns.Put(context.Background(), "down", act.NotifierSpec{URL: down}); err != nil {
		ns.Close()
		return nil, err
	}
	for i, u := range receivers {
		if _, _, err := ns.Put(context.Background(), fmt.Sprintf("live-%d", i+1), act.NotifierSpec{URL: u, Secret: "load", Parallel: parallel}); err != nil {
			ns.Close()
			return nil, err
		}
	}
	return ns.Close, nil
}

// putNotifiers registers the same notifiers with a vigil serve over its
// API; stop deletes them.
func putNotifiers(ctx context.Context, c *client.Client, receivers []string, parallel int) (func(), error) {
	down, err := deadURL()
	if err != nil {
		return nil, err
	}
	var names []string
	stop := func() {
		for _, n := range names {
			_ = c.DeleteNotifier(context.Background(), n)
		}
	}
	if _, _, err := c.PutNotifier(ctx, "down", client.NotifierInput{Url: down}); err != nil {
		return nil, err
	}
	names = append(names, "down")
	secret := "load"
	for i, u := range receivers {
		name := fmt.Sprintf("live-%d", i+1)
		in := client.NotifierInput{Url: u, Secret: &secret}
		if parallel > 0 {
			in.Parallel = &parallel
		}
		if _, _, err := c.PutNotifier(ctx, name, in); err != nil {
			stop()
			return nil, err
		}
		names = append(names, name)
	}
	return stop, nil
}
