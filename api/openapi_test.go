package api

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	specOnce   sync.Once
	specDoc    *openapi3.T
	specRouter routers.Router
	specErr    error
)

// spec loads and validates the served OpenAPI document once.
func spec(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	specOnce.Do(func() {
		specDoc, specErr = openapi3.NewLoader().LoadFromData(openAPI)
		if specErr != nil {
			return
		}
		if specErr = specDoc.Validate(context.Background()); specErr != nil {
			return
		}
		specDoc.Servers = nil // match requests to any test server
		specRouter, specErr = gorillamux.NewRouter(specDoc)
	})
	require.NoError(t, specErr)
	return specDoc, specRouter
}

// conforms checks one response against the document: its status is listed
// for the operation and its body matches the schema. Requests to routes the
// document does not have (404 and 405 rows) are not checked.
func conforms(t *testing.T, req *http.Request, resp *http.Response, body []byte) {
	t.Helper()
	_, router := spec(t)
	route, params, err := router.FindRoute(req)
	if err != nil {
		return
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	assert.NoError(t, openapi3filter.ValidateResponse(context.Background(), in), "%s %s → %d %s", req.Method, req.URL.Path, resp.StatusCode, body)
}

// TestOpenAPIMatchesRoutes checks that the document and the router list the
// same operations.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc, _ := spec(t)
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	e := New(nil, Options{Log: zerolog.Nop(), Metrics: NewMetrics(), UI: http.NotFoundHandler()})
	var served []string
	for _, r := range e.Routes() {
		if strings.HasPrefix(r.Name, "github.com/labstack/echo") || r.Path == "/*" || r.Method == "echo_route_any" {
			continue
		}
		// the dashboard's static files (/ui, which redirects, and /ui/*) are
		// a page for people, not operations of the API
		if r.Path == "/ui" || strings.HasPrefix(r.Path, "/ui/") {
			continue
		}
		path := strings.ReplaceAll(r.Path, `\:`, ":") // an escaped colon is a colon
		for _, seg := range strings.Split(path, "/") {
			if strings.HasPrefix(seg, ":") {
				path = strings.Replace(path, seg, "{"+seg[1:]+"}", 1)
			}
		}
		served = append(served, r.Method+" "+path)
	}
	sort.Strings(documented)
	sort.Strings(served)
	assert.Equal(t, documented, served)
}
