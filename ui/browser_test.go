package ui_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/ui"
)

var screenshots = flag.Bool("screenshots", false, "write the screenshots of the views into docs/screenshots (make screenshots)")

// browser is one headless chromium for the whole test binary; each test
// opens tabs in it.
var browser struct {
	once   sync.Once
	ctx    context.Context
	cancel func()
	dir    string
	err    error
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if browser.cancel != nil {
		browser.cancel()
	}
	if browser.dir != "" {
		_ = os.RemoveAll(browser.dir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// chromium finds Debian's chromium (or VIGIL_CHROMIUM). Without one the
// browser tests skip, except under CI, where they must run.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("VIGIL_CHROMIUM"), "chromium", "chromium-browser"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "chromium is not installed (Debian: apt-get install -y chromium; or set VIGIL_CHROMIUM): the dashboard's browser tests need it"
	if os.Getenv("CI") != "" {
		t.Fatal(msg + "; CI must run them, not skip them")
	}
	t.Skip(msg)
	return ""
}

// startBrowser starts chromium once: headless, with a fresh profile, and
// with everything that would reach for the network turned off (this
// machine has none, and chromium stalls on such connections otherwise).
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	path := chromium(t)
	browser.once.Do(func() {
		browser.dir, browser.err = os.MkdirTemp("", "vigil-chromium-")
		if browser.err != nil {
			return
		}
		opts := append(chromedp.DefaultExecAllocatorOptions[:],
			chromedp.ExecPath(path),
			chromedp.UserDataDir(browser.dir),
			chromedp.Flag("no-sandbox", true),
			chromedp.Flag("disable-gpu", true),
			chromedp.Flag("disable-background-networking", true),
			chromedp.Flag("disable-component-update", true),
			chromedp.Flag("disable-sync", true),
			chromedp.Flag("no-first-run", true),
			chromedp.Flag("disable-domain-reliability", true),
			chromedp.Flag("no-proxy-server", true),
			chromedp.WindowSize(1280, 900),
		)
		alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
		ctx, cancelCtx := chromedp.NewContext(alloc)
		browser.ctx = ctx
		browser.cancel = func() { cancelCtx(); cancelAlloc() }
		browser.err = chromedp.Do(ctx) // starts the browser
	})
	require.NoError(t, browser.err, "starting chromium")
	return browser.ctx
}

// page is one tab on one vigil, with what the page wrote to its console.
type page struct {
	t   *testing.T
	ctx context.Context
	url string

	mu       sync.Mutex
	messages []string
	thrown   []string
}

// open opens a tab of the size given at the dashboard's url (+ fragment).
// The test fails if the page throws.
func open(t *testing.T, base, fragment string, width, height int64) *page {
	t.Helper()
	parent := startBrowser(t)
	ctx, cancel := chromedp.NewContext(parent)
	ctx, cancelTimeout := context.WithTimeout(ctx, 50*time.Second)
	p := &page{t: t, ctx: ctx, url: base}
	messages := chromedp.Console(ctx)
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(width, height)))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			p.mu.Lock()
			if m.IsException() {
				p.thrown = append(p.thrown, fmt.Sprintf("%s:%d %s", m.URL, m.Line+1, m))
			} else {
				p.messages = append(p.messages, fmt.Sprintf("console.%s %s", m.Type, m))
			}
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancelTimeout()
		cancel()
		<-done
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, m := range p.messages {
			t.Log(m)
		}
		for _, e := range p.thrown {
			t.Errorf("the page threw: %s", e)
		}
	})
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(base+"/ui/"+fragment)))
	return p
}

// do runs actions on the tab.
func (p *page) do(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	require.NoError(p.t, chromedp.Do(p.ctx, steps...))
}

// eval evaluates an expression (awaiting a promise) and decodes its value.
func eval[T any](p *page, expr string) T {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	require.NoError(p.t, err, expr)
	return v
}

// wait polls a predicate in the page until it is true, for up to timeout.
func (p *page) wait(timeout time.Duration, predicate string) {
	p.t.Helper()
	_, err := chromedp.Run(p.ctx, chromedp.Poll[bool](predicate, chromedp.WithPollingTimeout(timeout)))
	require.NoError(p.t, err, "waiting for: %s\n%s", predicate, p.text("main"))
}

// text is the text of the first element the selector names.
func (p *page) text(sel string) string {
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](fmt.Sprintf(`(document.querySelector(%q)||{}).innerText||''`, sel)))
	if err != nil {
		return err.Error()
	}
	return v
}

// hash navigates within the page.
func (p *page) hash(fragment string) {
	p.t.Helper()
	eval[chromedp.Void](p, fmt.Sprintf(`location.hash = %q`, fragment))
}

// unlabelled lists what a person with a screen reader or a keyboard would
// miss in the view shown: form controls without a label, buttons and links
// without text, images without alt, a view without its heading.
func (p *page) unlabelled() []string {
	p.t.Helper()
	return eval[[]string](p, `(() => {
		const bad = [];
		const show = (el) => el.outerHTML.slice(0, 100);
		for (const el of document.querySelectorAll('input, select, textarea'))
			if (!el.labels.length && !el.getAttribute('aria-label')) bad.push('no label: ' + show(el));
		for (const el of document.querySelectorAll('button, a[href], summary'))
			if (!el.textContent.trim() && !el.getAttribute('aria-label')) bad.push('no text: ' + show(el));
		for (const el of document.querySelectorAll('img')) if (!el.hasAttribute('alt')) bad.push('no alt: ' + show(el));
		for (const el of document.querySelectorAll('svg[role=img]')) if (!el.getAttribute('aria-label')) bad.push('no label: ' + show(el));
		if (document.querySelectorAll('main h1').length !== 1) bad.push('not one h1 in main');
		for (const t of document.querySelectorAll('main table')) if (!t.querySelector('caption, th[scope]')) bad.push('a table without headers');
		return bad;
	})()`)
}

// timing is one render the page measured (window.vigil.timings).
type timing struct {
	View   string  `json:"view"`
	Rows   int     `json:"rows"`
	Page   int     `json:"page"`
	Server float64 `json:"server"`
	Body   float64 `json:"body"`
	Parse  float64 `json:"parse"`
	Build  float64 `json:"build"`
	Render float64 `json:"render"`
}

func (p *page) timings() []timing { return eval[[]timing](p, `window.vigil.timings`) }

// screenshot captures the viewport (or the whole page) as a PNG; it is
// written into docs/screenshots with -screenshots.
func (p *page) screenshot(name string, full bool) {
	p.t.Helper()
	shot := chromedp.CaptureScreenshot()
	if full {
		shot = chromedp.FullScreenshot(100)
	}
	png, err := chromedp.Run(p.ctx, shot)
	require.NoError(p.t, err)
	require.True(p.t, bytes.HasPrefix(png, []byte("\x89PNG")), "a PNG")
	dir := p.t.TempDir()
	if *screenshots {
		dir = filepath.Join("..", "docs", "screenshots")
		require.NoError(p.t, os.MkdirAll(dir, 0o755))
	}
	require.NoError(p.t, os.WriteFile(filepath.Join(dir, name), png, 0o644))
}

// syncBuffer is a log sink the server writes to while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// vigil is a real API over a real scheduler on a loopback port, with the
// dashboard mounted, as vigil serve runs them.
type vigil struct {
	URL   string
	sched *actors.Scheduler
	log   *syncBuffer
}

// serve starts the scheduler (over store, when given) and the API. opt's
// Log, Metrics, UI and Shutdown are set here.
func serve(t *testing.T, store actors.Store, opt api.Options, sopts ...actors.Option) *vigil {
	t.Helper()
	m := api.NewMetrics()
	sopts = append(sopts, actors.WithObserver(m), actors.WithAskTimeout(5*time.Second))
	if store != nil {
		sopts = append(sopts, actors.WithStore(store))
	}
	s, err := actors.New(context.Background(), sopts...)
	require.NoError(t, err)
	logs := &syncBuffer{}
	shutdown := make(chan struct{})
	opt.Log, opt.Metrics, opt.UI, opt.Shutdown = zerolog.New(logs), m, ui.Handler(), shutdown
	srv := httptest.NewServer(api.New(s, opt))
	t.Cleanup(func() {
		close(shutdown)
		srv.CloseClientConnections()
		srv.Close()
		require.NoError(t, s.Close(context.Background()))
	})
	return &vigil{URL: srv.URL, sched: s, log: logs}
}

// has says whether the page's text has all of the words.
func has(text string, words ...string) bool {
	for _, w := range words {
		if !strings.Contains(text, w) {
			return false
		}
	}
	return true
}
