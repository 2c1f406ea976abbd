package main

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// clearVigilEnv unsets every VIGIL_* variable of the test process for the
// test (t.Setenv restores them after), so that the developer's own
// environment cannot change what dispatch parses.
func clearVigilEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "VIGIL_") {
			t.Setenv(k, "")
			require.NoError(t, os.Unsetenv(k))
		}
	}
}

// runCLI runs the command in-process and returns its exit code, stdout and
// stderr.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := dispatch(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// singleDashFlag is a help line that shows a flag as -name instead of --name.
var singleDashFlag = regexp.MustCompile(`(?m)^  -[A-Za-z]`)

func TestCLIHelp(t *testing.T) {
	for _, tc := range []struct {
		command string
		flags   []string          // every flag, in the help as --name
		env     map[string]string // flag → its variable, in the environment section
	}{
		{
			command: "serve",
			flags:   []string{"listen", "data-dir", "probe-budget", "log-level", "log-format", "token", "insecure"},
			env: map[string]string{"listen": "VIGIL_LISTEN", "data-dir": "VIGIL_DATA_DIR", "probe-budget": "VIGIL_PROBE_BUDGET",
				"log-level": "VIGIL_LOG_LEVEL", "log-format": "VIGIL_LOG_FORMAT", "token": "VIGIL_TOKEN", "insecure": "VIGIL_INSECURE"},
		},
		{
			command: "agent",
			flags:   []string{"listen", "max-concurrent", "ready-file", "log-level"},
			env: map[string]string{"listen": "VIGIL_AGENT_LISTEN", "max-concurrent": "VIGIL_AGENT_MAX_CONCURRENT",
				"ready-file": "VIGIL_AGENT_READY_FILE", "log-level": "VIGIL_LOG_LEVEL"},
		},
		{
			command: "loadtest",
			flags: []string{"instances", "type", "interval", "timeout", "start-period", "hung", "flip", "duration", "store",
				"data-dir", "probe-budget", "json", "cpuprofile", "memprofile", "log-level"},
		},
	} {
		for _, help := range []string{"--help", "-h", "-help"} {
			t.Run(tc.command+" "+help, func(t *testing.T) {
				clearVigilEnv(t)
				code, stdout, stderr := runCLI(t, tc.command, help)
				require.Equal(t, 0, code, "stderr: %s", stderr)
				assert.Empty(t, stderr, "help goes to stdout")
				assert.True(t, strings.HasPrefix(stdout, "usage: vigil "+tc.command+" [flags]\n"), stdout)
				assert.NotRegexp(t, singleDashFlag, stdout, "flags are shown as --name")
				for _, name := range tc.flags {
					assert.Regexp(t, `(?m)^  --`+regexp.QuoteMeta(name)+`( |$)`, stdout, "--%s in the flags", name)
				}
				for name, v := range tc.env {
					assert.Regexp(t, `(?m)^  `+v+` +--`+regexp.QuoteMeta(name)+`$`, stdout, "%s in the environment section", v)
					assert.Contains(t, stdout, "(env "+v, "%s next to --%s", v, name)
				}
			})
		}
	}
}

func TestCLITopLevelHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"help"}, {"-h"}} {
		t.Run(args[0], func(t *testing.T) {
			code, stdout, stderr := runCLI(t, args...)
			require.Equal(t, 0, code)
			assert.Empty(t, stderr)
			assert.True(t, strings.HasPrefix(stdout, "usage: vigil <command> [flags]\n"), stdout)
			for _, c := range []string{"serve", "agent", "loadtest", "version"} {
				assert.Regexp(t, `(?m)^  `+c+` `, stdout, "%s is listed", c)
			}
			assert.Contains(t, stdout, "'vigil <command> --help'")
			assert.NotRegexp(t, singleDashFlag, stdout)
		})
	}
}

// TestCLIBadEnvironment: a bad VIGIL_* value is a usage error (exit 2) that
// names the variable and the value, and nothing else is printed.
func TestCLIBadEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string
	}{
		{
			name: "integer", env: map[string]string{"VIGIL_PROBE_BUDGET": "abc"}, args: []string{"serve"},
			wantErr: `vigil serve: VIGIL_PROBE_BUDGET="abc" is not valid for --probe-budget: it must be an integer` + "\n",
		},
		{
			name: "empty integer", env: map[string]string{"VIGIL_PROBE_BUDGET": ""}, args: []string{"serve"},
			wantErr: `vigil serve: VIGIL_PROBE_BUDGET="" is not valid for --probe-budget: it must be an integer` + "\n",
		},
		{
			name: "bool", env: map[string]string{"VIGIL_INSECURE": "maybe"}, args: []string{"serve"},
			wantErr: `vigil serve: VIGIL_INSECURE="maybe" is not valid for --insecure: it must be true or false` + "\n",
		},
		{
			name: "agent integer", env: map[string]string{"VIGIL_AGENT_MAX_CONCURRENT": "many"}, args: []string{"agent"},
			wantErr: `vigil agent: VIGIL_AGENT_MAX_CONCURRENT="many" is not valid for --max-concurrent: it must be an integer` + "\n",
		},
		// the log level and format are checked after parsing, by newLogger:
		// the message must still name the variable the value came from
		{
			name: "log level", env: map[string]string{"VIGIL_LOG_LEVEL": "loud"}, args: []string{"serve"},
			wantErr: `vigil serve: VIGIL_LOG_LEVEL="loud" is not valid for --log-level: it must be one of debug, info, warn, error` + "\n",
		},
		{
			name: "agent log level", env: map[string]string{"VIGIL_LOG_LEVEL": "loud"}, args: []string{"agent"},
			wantErr: `vigil agent: VIGIL_LOG_LEVEL="loud" is not valid for --log-level: it must be one of debug, info, warn, error` + "\n",
		},
		{
			name: "log format", env: map[string]string{"VIGIL_LOG_FORMAT": "xml"}, args: []string{"serve"},
			wantErr: `vigil serve: VIGIL_LOG_FORMAT="xml" is not valid for --log-format: it must be json or console` + "\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearVigilEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := runCLI(t, tc.args...)
			assert.Equal(t, 2, code)
			assert.Equal(t, tc.wantErr, stderr)
			assert.Empty(t, stdout)
		})
	}
}

// TestCLIHelpDespiteBadEnvironment: --help is how an operator finds out what
// a variable should hold, so a bad value must not hide it.
func TestCLIHelpDespiteBadEnvironment(t *testing.T) {
	clearVigilEnv(t)
	t.Setenv("VIGIL_PROBE_BUDGET", "abc")
	code, stdout, stderr := runCLI(t, "serve", "--help")
	assert.Equal(t, 0, code, "stderr: %s", stderr)
	assert.True(t, strings.HasPrefix(stdout, "usage: vigil serve [flags]\n"), stdout)
}

// TestCLIFlagWinsOverEnvironment: a flag on the command line replaces the
// variable's value, so a bad log level in the environment does not matter;
// the run then fails on the next check (a non-loopback --listen), exit 2.
func TestCLIFlagWinsOverEnvironment(t *testing.T) {
	clearVigilEnv(t)
	t.Setenv("VIGIL_LOG_LEVEL", "loud")
	code, _, stderr := runCLI(t, "serve", "--log-level", "info", "--listen", "0.0.0.0:0", "--data-dir", t.TempDir())
	assert.Equal(t, 2, code, stderr)
	assert.Contains(t, stderr, "not a loopback address")
	assert.NotContains(t, stderr, "loud")
}

// TestCLIBadFlags: a bad value names the flag and the value and says what it
// must be; every parse error is exit 2 with nothing on stdout.
func TestCLIBadFlags(t *testing.T) {
	const hint = "Run 'vigil %s --help' for the flags.\n"
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"integer", []string{"serve", "--probe-budget", "x"},
			`vigil serve: --probe-budget "x": it must be an integer` + "\n" + hint},
		{"integer with =", []string{"serve", "--probe-budget=x"},
			`vigil serve: --probe-budget "x": it must be an integer` + "\n" + hint},
		{"empty integer", []string{"serve", "--probe-budget="},
			`vigil serve: --probe-budget "": it must be an integer` + "\n" + hint},
		{"single dash", []string{"serve", "-probe-budget", "x"},
			`vigil serve: --probe-budget "x": it must be an integer` + "\n" + hint},
		{"value with a quote", []string{"serve", "--probe-budget", `a"b`},
			`vigil serve: --probe-budget "a\"b": it must be an integer` + "\n" + hint},
		{"bool", []string{"serve", "--insecure=maybe"},
			`vigil serve: --insecure "maybe": it must be true or false` + "\n" + hint},
		{"agent integer", []string{"agent", "--max-concurrent", "1.5"},
			`vigil agent: --max-concurrent "1.5": it must be an integer` + "\n" + hint},
		{"duration", []string{"loadtest", "--interval", "5"},
			`vigil loadtest: --interval "5": it must be a duration such as "10s"` + "\n" + hint},
		{"number", []string{"loadtest", "--hung", "x"},
			`vigil loadtest: --hung "x": it must be a number` + "\n" + hint},
		{"loadtest bool", []string{"loadtest", "--json=x"},
			`vigil loadtest: --json "x": it must be true or false` + "\n" + hint},
		{"missing value", []string{"serve", "--listen"},
			`vigil serve: flag needs an argument: --listen` + "\n" + hint},
		{"log level", []string{"serve", "--log-level", "loud"},
			`vigil serve: --log-level must be one of debug, info, warn, error (got "loud")` + "\n"},
		{"agent log level", []string{"agent", "--log-level", "LOUD"},
			`vigil agent: --log-level must be one of debug, info, warn, error (got "LOUD")` + "\n"},
		{"log level zerolog knows but vigil does not", []string{"serve", "--log-level", "trace"},
			`vigil serve: --log-level must be one of debug, info, warn, error (got "trace")` + "\n"},
		{"log format", []string{"serve", "--log-format", "xml"},
			`vigil serve: --log-format must be json or console (got "xml")` + "\n"},
		{"unknown serve flag", []string{"serve", "--nope"},
			`vigil serve: flag provided but not defined: --nope` + "\n" + hint},
		{"unknown agent flag", []string{"agent", "--nope"},
			`vigil agent: flag provided but not defined: --nope` + "\n" + hint},
		{"unknown loadtest flag", []string{"loadtest", "-nope"},
			`vigil loadtest: flag provided but not defined: --nope` + "\n" + hint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearVigilEnv(t)
			want := tc.wantErr
			if strings.HasSuffix(want, hint) {
				want = strings.TrimSuffix(want, hint) + strings.Replace(hint, "%s", tc.args[0], 1)
			}
			code, stdout, stderr := runCLI(t, tc.args...)
			assert.Equal(t, 2, code)
			assert.Equal(t, want, stderr)
			assert.Empty(t, stdout)
		})
	}
}
