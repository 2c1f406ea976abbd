package ui_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/ui"
)

// TestHandler serves the embedded files with their types, revalidation by
// ETag, the page's content security policy, and JSON for a missing file,
// mounted in the API as vigil serve mounts it.
func TestHandler(t *testing.T) {
	srv := httptest.NewServer(api.New(nil, api.Options{UI: ui.Handler(), Token: "t"}))
	defer srv.Close()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(method, path string, headers ...string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, nil)
		require.NoError(t, err)
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := noRedirect.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, string(b)
	}

	resp, body := get("GET", "/ui/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "script-src 'self'")
	assert.Contains(t, body, `<script type="module" src="app.js">`)
	etag := resp.Header.Get("ETag")
	require.NotEmpty(t, etag)
	resp, body = get("GET", "/ui/", "If-None-Match", etag)
	assert.Equal(t, http.StatusNotModified, resp.StatusCode)
	assert.Empty(t, body)

	for path, ctype := range map[string]string{"/ui/app.js": "text/javascript; charset=utf-8", "/ui/style.css": "text/css; charset=utf-8",
		"/ui/favicon.svg": "image/svg+xml", "/ui/index.html": "text/html; charset=utf-8"} {
		resp, body := get("GET", path)
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.Equal(t, ctype, resp.Header.Get("Content-Type"), path)
		assert.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"), path)
		assert.NotEmpty(t, body, path)
		resp, body = get("HEAD", path)
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.Empty(t, body, path)
	}

	resp, body = get("GET", "/ui/nothing.js")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	assert.Contains(t, body, `"code":"not_found"`)

	resp, _ = get("GET", "/ui")
	assert.Equal(t, http.StatusMovedPermanently, resp.StatusCode)
	assert.Equal(t, "/ui/", resp.Header.Get("Location"))

	// every module the page imports is embedded
	_, app := get("GET", "/ui/app.js")
	for _, line := range strings.Split(app, "\n") {
		if _, from, ok := strings.Cut(line, " from './"); ok {
			name := strings.TrimSuffix(strings.TrimSpace(from), "';")
			resp, _ := get("GET", "/ui/"+name)
			assert.Equal(t, http.StatusOK, resp.StatusCode, name)
		}
	}
}
