package persistence

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/clock"
	"github.com/vigilhq/vigil/health"
)

// crashChild runs, in a subprocess, a scheduler with the Badger store that
// registers instances and reports every acknowledged registration ("ACK id")
// and every published transition ("EV seq id to") on stdout until it is
// killed.
func crashChild() bool {
	dir := os.Getenv("VIGIL_CRASH_DIR")
	if dir == "" {
		return false
	}
	store, err := Open(dir, Options{Logger: zerolog.Nop()})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0") // healthy target; refused ports for the others
	port := l.Addr().(*net.TCPAddr).Port
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadPort := dead.Addr().(*net.TCPAddr).Port
	_ = dead.Close()
	ctx := context.Background()
	s, err := actors.New(ctx, actors.WithStore(store))
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	lines := make(chan string, 4096)
	sub := s.Subscribe(1 << 16)
	go func() {
		for ev := range sub.C {
			if ev.Kind != "" {
				lines <- fmt.Sprintf("KIND %d %s", ev.Seq, ev.Kind) // half the fleet failing at once opens an incident
				continue
			}
			lines <- fmt.Sprintf("EV %d %s %s", ev.Seq, ev.InstanceID, ev.To)
		}
	}()
	go func() {
		for i := 0; ; i++ {
			p := port
			if i%2 == 1 {
				p = deadPort
			}
			id := "vm-" + strconv.Itoa(i)
			_, _, err := s.Put(ctx, id, health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
				HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: p}, StartPeriod: "0s", FailureThreshold: ptr(1)}})
			if err == nil {
				lines <- "ACK " + id
			}
		}
	}()
	for line := range lines {
		out.WriteString(line + "\n")
		out.Flush()
	}
	return true
}

func ptr(i int) *int { return &i }

func TestCrashLosesNothingAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("subprocess test")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "VIGIL_CRASH_DIR="+dir)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())

	acked := map[string]bool{}
	lastTo := map[string]health.Status{}
	var maxSeq uint64
	sc := bufio.NewScanner(stdout)
	deadline := time.Now().Add(30 * time.Second)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch f[0] {
		case "ACK":
			acked[f[1]] = true
		case "EV":
			seq, _ := strconv.ParseUint(f[1], 10, 64)
			maxSeq = max(maxSeq, seq)
			lastTo[f[2]] = health.Status(f[3])
		case "KIND":
			seq, _ := strconv.ParseUint(f[1], 10, 64)
			maxSeq = max(maxSeq, seq)
		case "ERR":
			t.Fatal(sc.Text())
		}
		if (len(acked) >= 300 && maxSeq >= 400) || time.Now().After(deadline) {
			break
		}
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL), "killed mid-burst")
	_ = cmd.Wait()
	require.GreaterOrEqual(t, len(acked), 300)
	require.GreaterOrEqual(t, maxSeq, uint64(400))

	store := open(t, dir)
	defer store.Close()
	clk := clock.NewFake(time.Now()) // no probe runs while we look
	s, err := actors.New(context.Background(), actors.WithStore(store), actors.WithClock(clk))
	require.NoError(t, err)
	defer s.Close(context.Background())
	require.Eventually(t, s.Ready, 10*time.Second, time.Millisecond, "every stored instance gets its actor")

	for id := range acked {
		info, ok := s.Peek(id)
		require.True(t, ok, "acknowledged registration %s survived", id)
		require.NotNil(t, info.HealthCheck, id)
		assert.Equal(t, health.TypeTCP, info.HealthCheck.Type)
	}
	events, _, err := store.Events(0, 1<<20)
	require.NoError(t, err)
	bySeq := map[uint64]actors.Event{}
	lastInLog := map[string]health.Status{}
	for i, ev := range events {
		bySeq[ev.Seq] = ev
		lastInLog[ev.InstanceID] = ev.To
		if i > 0 {
			require.Equal(t, events[i-1].Seq+1, ev.Seq, "no gaps in the log")
		}
	}
	for seq := uint64(1); seq <= maxSeq; seq++ {
		_, ok := bySeq[seq]
		require.True(t, ok, "published transition %d is in the log", seq)
	}
	resumed := 0
	for id, to := range lastTo {
		info, ok := s.Peek(id)
		require.True(t, ok)
		assert.Equal(t, lastInLog[id], info.Health.Status, "%s resumes at its last durable transition", id)
		if to != health.StatusStarting {
			resumed++
		}
	}
	assert.Positive(t, resumed, "some instances resumed healthy or unhealthy, not starting")

	// sequence numbers continue
	sub := s.Subscribe(4)
	defer sub.Close()
	_, err = s.SetState(context.Background(), "vm-0", health.Stopped, nil)
	require.NoError(t, err)
	ev := <-sub.C
	assert.Greater(t, ev.Seq, events[len(events)-1].Seq)
	t.Logf("acknowledged %d registrations and %d transitions before SIGKILL; log holds %d events", len(acked), maxSeq, len(events))
}
