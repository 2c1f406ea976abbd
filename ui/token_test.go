package ui_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/health"
)

// TestDashboardWithAToken: the page's files need no token; the page asks
// for one, says clearly when it is refused, and works once it has the right
// one, the event stream included. The token never reaches the log.
func TestDashboardWithAToken(t *testing.T) {
	const secret = "dashboard-s3cret-token"
	v := serve(t, nil, api.Options{Token: secret})
	ctx := context.Background()
	_, _, err := v.sched.Put(ctx, "vm-1", health.InstanceSpec{State: health.Running})
	require.NoError(t, err)

	for path, code := range map[string]int{"/ui/": 200, "/ui/app.js": 200, "/ui/style.css": 200, "/v1/summary": 401,
		"/v1/events?token=" + secret: 401, "/metrics": 401} {
		resp, err := http.Get(v.URL + path)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, code, resp.StatusCode, path)
	}

	p := open(t, v.URL, "", 1280, 900)
	p.wait(5*time.Second, `document.getElementById('auth-h') !== null`)
	assert.Contains(t, p.text("main"), "This vigil requires a token")
	assert.False(t, eval[bool](p, `document.querySelector('[data-count]') !== null`), "no data without the token")
	assert.Empty(t, p.unlabelled(), "the token form")
	assert.Equal(t, "token", eval[string](p, `document.activeElement.id`), "the token field has the focus")

	p.do(chromedp.SendKeys(chromedp.ID("token"), "wrong-token"), chromedp.Click(chromedp.CSS(`form.token button[type=submit]`)))
	p.wait(5*time.Second, `(document.querySelector('#auth-error[role=alert]') || {}).textContent?.includes('refused')`)
	assert.Contains(t, p.text("#auth-error"), "The token was refused")
	assert.Empty(t, eval[string](p, `sessionStorage.getItem('vigil.token') || ''`), "a refused token is not kept")

	p.do(chromedp.SendKeys(chromedp.ID("token"), secret+"\r"))
	p.wait(5*time.Second, `window.vigil.ready && (document.querySelector('[data-count=total]') || {}).textContent === '1'`)
	assert.Equal(t, secret, eval[string](p, `sessionStorage.getItem('vigil.token')`), "kept for the tab")
	p.wait(5*time.Second, `document.getElementById('conn').textContent === 'Live'`)

	// the stream carries the token in its header: a registration shows up
	_, _, err = v.sched.Put(ctx, "vm-2", health.InstanceSpec{State: health.Running})
	require.NoError(t, err)
	p.wait(5*time.Second, `document.querySelector('#feed li[data-instance="vm-2"]') !== null`)

	// a reload keeps the token (same tab); the instance view works with it
	p.do(chromedp.Reload())
	p.wait(5*time.Second, `window.vigil.ready && document.querySelector('[data-count=total]') !== null`)
	p.hash("#/instances/vm-1")
	p.wait(5*time.Second, `document.querySelector('#inst-status[data-status=disabled]') !== null`)

	// forgetting it locks the page again
	p.do(chromedp.Click(chromedp.ID("forget")))
	p.wait(5*time.Second, `document.getElementById('auth-h') !== null`)
	assert.Empty(t, eval[string](p, `sessionStorage.getItem('vigil.token') || ''`))

	require.Eventually(t, func() bool { return strings.Contains(v.log.String(), `"path":"/v1/events"`) },
		5*time.Second, 10*time.Millisecond, "the stream, closed by the page, is logged")
	logs := v.log.String()
	assert.NotContains(t, logs, secret, "the token is never logged")
	assert.False(t, strings.Contains(logs, "wrong-token"), "nor a wrong one")
}
