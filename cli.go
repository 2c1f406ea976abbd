package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// command is one subcommand's flags. Every flag may also come from a VIGIL_*
// environment variable; a flag on the command line wins over it.
type command struct {
	name, summary string
	fs            *flag.FlagSet
	vars          map[string]string // flag name → its environment variable
	order         []string
	meta          map[string]string   // flag name → the word for its value in help
	choices       map[string][]string // flag name → the values it accepts, when they are few
}

func newCommand(name, summary string) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // help and errors are printed by parse
	return &command{name: name, summary: summary, fs: fs, vars: map[string]string{}, meta: map[string]string{},
		choices: map[string][]string{}}
}

func (c *command) add(name, envVar, meta string) {
	c.order = append(c.order, name)
	if envVar != "" {
		c.vars[name] = envVar
	}
	c.meta[name] = meta
}

func (c *command) String(name, envVar, def, meta, usage string) *string {
	c.add(name, envVar, meta)
	return c.fs.String(name, def, usage)
}

// Choice is a string flag that takes one of a few values.
func (c *command) Choice(name, envVar, def, meta, usage string, choices ...string) *string {
	c.choices[name] = choices
	return c.String(name, envVar, def, meta, usage)
}

func (c *command) Int(name, envVar string, def int, usage string) *int {
	c.add(name, envVar, "N")
	return c.fs.Int(name, def, usage)
}

func (c *command) Float(name, envVar string, def float64, usage string) *float64 {
	c.add(name, envVar, "F")
	return c.fs.Float64(name, def, usage)
}

func (c *command) Bool(name, envVar string, def bool, usage string) *bool {
	c.add(name, envVar, "")
	return c.fs.Bool(name, def, usage)
}

func (c *command) Duration(name, envVar string, def time.Duration, usage string) *time.Duration {
	c.add(name, envVar, "DURATION")
	return c.fs.Duration(name, def, usage)
}

// errHelp is returned by parse after printing the help.
var errHelp = errors.New("help")

// parse reads the command line, then the environment for the flags the
// command line left out. Help goes to stdout, whatever the environment
// holds; an error names the flag, or the variable and its value.
func (c *command) parse(args []string, stdout, stderr io.Writer) error {
	err := c.fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.help(stdout)
		return errHelp
	case err != nil:
		msg := dashes(err.Error())
		if m := invalidValue.FindStringSubmatch(err.Error()); m != nil {
			msg = fmt.Sprintf("--%s %s: it %s", m[2], m[1], c.wanted(m[2], err))
		}
		fmt.Fprintf(stderr, "vigil %s: %s\nRun 'vigil %s --help' for the flags.\n", c.name, msg, c.name)
		return err
	case c.fs.NArg() > 0:
		err = fmt.Errorf("unexpected argument %q", c.fs.Arg(0))
		fmt.Fprintf(stderr, "vigil %s: %v\n", c.name, err)
		return err
	}
	given := map[string]bool{}
	c.fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	fromEnv := map[string]bool{}
	for _, name := range c.order {
		v, ok := os.LookupEnv(c.vars[name])
		if c.vars[name] == "" || !ok || given[name] {
			continue
		}
		fromEnv[name] = true
		if err := c.fs.Set(name, v); err != nil {
			err = fmt.Errorf("%s=%q is not valid for --%s: it %s", c.vars[name], v, name, c.wanted(name, err))
			fmt.Fprintf(stderr, "vigil %s: %v\n", c.name, err)
			return err
		}
	}
	for _, name := range c.order {
		choices := c.choices[name]
		v := c.fs.Lookup(name).Value.String()
		if choices == nil || slices.Contains(choices, v) {
			continue
		}
		if fromEnv[name] {
			err = fmt.Errorf("%s=%q is not valid for --%s: it must be %s", c.vars[name], v, name, oneOf(choices))
		} else {
			err = fmt.Errorf("--%s must be %s (got %q)", name, oneOf(choices), v)
		}
		fmt.Fprintf(stderr, "vigil %s: %v\n", c.name, err)
		return err
	}
	return nil
}

// oneOf writes choices for a message: "json or console", "one of a, b, c".
func oneOf(choices []string) string {
	if len(choices) == 2 {
		return choices[0] + " or " + choices[1]
	}
	return "one of " + strings.Join(choices, ", ")
}

// invalidValue matches the flag package's error for a value it cannot parse.
var invalidValue = regexp.MustCompile(`^invalid (?:boolean )?value ("(?:[^"\\]|\\.)*") for (?:flag )?-([a-z0-9-]+)`)

// wanted says what a flag's value must be, given the flag package's error.
func (c *command) wanted(name string, err error) string {
	if strings.Contains(err.Error(), "out of range") {
		return "is out of range"
	}
	switch c.meta[name] {
	case "N":
		return "must be an integer"
	case "F":
		return "must be a number"
	case "DURATION":
		return `must be a duration such as "10s"`
	case "":
		return "must be true or false"
	}
	return "is not valid"
}

// dashes writes the flag package's "-name" as "--name", as help does.
func dashes(msg string) string {
	for _, prefix := range []string{"flag provided but not defined: -", "invalid value ", "flag needs an argument: -"} {
		if i := strings.Index(msg, prefix); i >= 0 {
			j := i + len(prefix)
			if prefix == "invalid value " {
				if k := strings.Index(msg[j:], " for flag -"); k >= 0 {
					j += k + len(" for flag -")
				} else {
					continue
				}
			}
			return msg[:j-1] + "--" + msg[j:]
		}
	}
	return msg
}

// help prints the command's flags as README writes them, each with its
// environment variable and default.
func (c *command) help(w io.Writer) {
	fmt.Fprintf(w, "usage: vigil %s [flags]\n\n%s\n\nflags:\n", c.name, c.summary)
	for _, name := range c.order {
		f := c.fs.Lookup(name)
		left := "--" + name
		if m := c.meta[name]; m != "" {
			left += " " + m
		}
		fmt.Fprintf(w, "  %-26s %s\n", left, f.Usage)
		var extra []string
		if v := c.vars[name]; v != "" {
			extra = append(extra, "env "+v)
		}
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "0s" {
			extra = append(extra, "default "+f.DefValue)
		}
		if len(extra) > 0 {
			fmt.Fprintf(w, "  %-26s (%s)\n", "", strings.Join(extra, "; "))
		}
	}
	if len(c.vars) > 0 {
		fmt.Fprintf(w, "\nenvironment:\n")
		for _, name := range c.order {
			if v := c.vars[name]; v != "" {
				fmt.Fprintf(w, "  %-26s --%s\n", v, name)
			}
		}
	}
}

// logLevels are the valid --log-level values.
var logLevels = []string{"debug", "info", "warn", "error"}

// logTimeFormat writes timestamps with milliseconds.
const logTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// newLogger builds the process's one logger: JSON lines, or the console
// format (coloured only on a terminal).
func newLogger(level, format string, w io.Writer) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	valid := false
	for _, l := range logLevels {
		valid = valid || l == level
	}
	if err != nil || !valid {
		return zerolog.Logger{}, fmt.Errorf("--log-level must be one of %s (got %q)", strings.Join(logLevels, ", "), level)
	}
	zerolog.TimeFieldFormat = logTimeFormat
	switch format {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: logTimeFormat, NoColor: !isTerminal(w)}
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format must be json or console (got %q)", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exit is the exit code of a failed parse: 0 after --help, 2 otherwise.
func exit(err error) int {
	if errors.Is(err, errHelp) {
		return 0
	}
	return 2
}
