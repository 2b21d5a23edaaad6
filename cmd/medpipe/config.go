package main

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The config file (--config FILE or MEDPIPE_CONFIG) is YAML whose keys are
// flag names. A key at the top level applies to every command that has
// the flag; a command's section (up:, ingest:, archive: export: …) applies
// to that command only and wins over the top level. Precedence, per flag:
// the command line, then MEDPIPE_<FLAG>, then the section, then the top
// level, then the flag's default. The file is validated whole before any
// command uses it (configuredCommands' flag sets decide what is known), so
// a stage with a bad file refuses to start, exit code 2.

// configValue is a key's value(s) and where they are in the file.
type configValue struct {
	values []string // one per item for a sequence (a repeatable flag)
	line   int
}

// configFile is a parsed and validated config file.
type configFile struct {
	path     string
	top      map[string]configValue
	sections map[string]map[string]configValue // by command path: "up", "archive export"
}

// configProblem is one thing wrong in a config file, at a line.
type configProblem struct {
	line int
	msg  string
}

// configError lists every problem of a config file.
type configError struct {
	path     string
	problems []configProblem
}

func (e *configError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "config %s: %d problem(s)", e.path, len(e.problems))
	for _, p := range e.problems {
		if p.line > 0 {
			fmt.Fprintf(&b, "\n  %s:%d: %s", e.path, p.line, p.msg)
		} else {
			fmt.Fprintf(&b, "\n  %s: %s", e.path, p.msg)
		}
	}
	return b.String()
}

// configFlagName is the flag that names the config file.
const configFlagName = "config"

// loadConfig reads, parses and validates the config file at path.
func loadConfig(path string) (*configFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usageErr(fmt.Errorf("--%s: %w", configFlagName, err))
	}
	cfg, problems := parseConfig(path, data)
	if len(problems) > 0 {
		return nil, usageErr(&configError{path: path, problems: problems})
	}
	return cfg, nil
}

// parseConfig parses data and checks every key and value against the flag
// sets of the commands it configures.
func parseConfig(path string, data []byte) (*configFile, []configProblem) {
	cfg := &configFile{path: path, top: map[string]configValue{}, sections: map[string]map[string]configValue{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return nil, []configProblem{{msg: strings.Join(te.Errors, "; ")}}
		}
		return nil, []configProblem{{msg: err.Error()}} // the parser's message names the line
	}
	if len(doc.Content) == 0 {
		return cfg, nil // an empty file configures nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, []configProblem{{line: root.Line, msg: "want a mapping of flag names (and command sections) to values"}}
	}
	cmds := configuredCommands()
	byName := map[string]*flag.FlagSet{}
	for _, c := range cmds {
		byName[c.name()] = c.fs
	}
	var problems []configProblem
	add := func(line int, format string, a ...any) {
		problems = append(problems, configProblem{line, fmt.Sprintf(format, a...)})
	}
	// section reads the keys of one command's mapping.
	section := func(name string, m *yaml.Node) {
		fs := byName[name]
		vals := map[string]configValue{}
		seen := map[string]int{}
		for i := 0; i+1 < len(m.Content); i += 2 {
			k, v := m.Content[i], m.Content[i+1]
			if first, dup := seen[k.Value]; dup {
				add(k.Line, "%s: %s: given twice (first at line %d)", name, k.Value, first)
				continue
			}
			seen[k.Value] = k.Line
			cv, err := scalarValues(v)
			if err != nil {
				add(v.Line, "%s: %s: %v", name, k.Value, err)
				continue
			}
			var having []*flag.FlagSet
			if fs.Lookup(k.Value) != nil {
				having = append(having, fs)
			}
			if msg := checkKey(k.Value, cv, having, "medpipe "+name); msg != "" {
				add(k.Line, "%s: %s", name, msg)
				continue
			}
			vals[k.Value] = cv
		}
		cfg.sections[name] = vals
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if first, dup := seen[k.Value]; dup {
			add(k.Line, "%s: given twice (first at line %d)", k.Value, first)
			continue
		}
		seen[k.Value] = k.Line
		isSection := byName[k.Value] != nil || subcommandsWithFlags[k.Value] != nil
		if isSection && v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
			continue // a section whose keys are all commented out
		}
		if v.Kind == yaml.MappingNode {
			switch {
			case byName[k.Value] != nil:
				section(k.Value, v)
			case subcommandsWithFlags[k.Value] != nil:
				for j := 0; j+1 < len(v.Content); j += 2 {
					sk, sv := v.Content[j], v.Content[j+1]
					name := k.Value + " " + sk.Value
					if byName[name] != nil && sv.Kind == yaml.ScalarNode && sv.Tag == "!!null" {
						continue
					}
					if byName[name] == nil || sv.Kind != yaml.MappingNode {
						add(sk.Line, "%s: unknown subcommand section %q (want one of %s)", k.Value, sk.Value, strings.Join(subcommandsWithFlags[k.Value], ", "))
						continue
					}
					section(name, sv)
				}
			default:
				add(k.Line, "unknown section %q: sections are commands (%s)", k.Value, strings.Join(sectionNames(cmds), ", "))
			}
			continue
		}
		cv, err := scalarValues(v)
		if err != nil {
			add(v.Line, "%s: %v", k.Value, err)
			continue
		}
		var having []*flag.FlagSet
		for _, c := range cmds {
			if c.fs.Lookup(k.Value) != nil {
				having = append(having, c.fs)
			}
		}
		if msg := checkKey(k.Value, cv, having, "any command that reads the config file"); msg != "" {
			add(k.Line, "%s", msg)
			continue
		}
		cfg.top[k.Value] = cv
	}
	return cfg, problems
}

// sectionNames are the top-level section names.
func sectionNames(cmds []commandFlags) []string {
	var out []string
	for _, c := range cmds {
		if !slices.Contains(out, c.path[0]) {
			out = append(out, c.path[0])
		}
	}
	return out
}

// scalarValues reads a scalar, or a sequence of scalars, as strings.
func scalarValues(v *yaml.Node) (configValue, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return configValue{}, errors.New("no value (remove the key to keep the default)")
		}
		return configValue{values: []string{v.Value}, line: v.Line}, nil
	case yaml.SequenceNode:
		cv := configValue{line: v.Line}
		for _, item := range v.Content {
			if item.Kind != yaml.ScalarNode {
				return cv, fmt.Errorf("line %d: a list holds plain values", item.Line)
			}
			cv.values = append(cv.values, item.Value)
		}
		return cv, nil
	}
	return configValue{}, errors.New("want a value or a list of values")
}

// secretWords in a key's name mark a value that must not be in a file
// meant to be shared, reviewed and committed.
var secretWords = []string{"password", "passwd", "secret", "token", "seed"}

// checkKey reports what is wrong with key = cv for the flag sets that have
// the flag ("" when nothing is).
func checkKey(key string, cv configValue, having []*flag.FlagSet, where string) string {
	if key == configFlagName {
		return "config: a config file cannot name another"
	}
	if now, ok := deprecatedFlags[key]; ok {
		return fmt.Sprintf("%s: deprecated spelling; use %s", key, now)
	}
	if len(having) == 0 {
		for _, w := range secretWords {
			if strings.Contains(key, w) {
				return fmt.Sprintf("%s: secrets never go in the config file: name the file that holds it (e.g. nats-password-file, mqtt-password-file) or use the environment", key)
			}
		}
		return fmt.Sprintf("%s: unknown key (not a flag of %s)", key, where)
	}
	for _, fs := range having {
		f := fs.Lookup(key)
		if len(cv.values) > 1 && !isRepeatable(f) {
			return fmt.Sprintf("%s: takes one value, not a list", key)
		}
		for _, v := range cv.values {
			if err := refuseURLPassword(v); err != nil {
				return fmt.Sprintf("%s: %v", key, err)
			}
			if err := f.Value.Set(v); err != nil {
				return fmt.Sprintf("%s: %q: %v", key, v, err)
			}
		}
	}
	return ""
}

// isRepeatable reports whether a flag takes several values (a list).
func isRepeatable(f *flag.Flag) bool {
	_, ok := f.Value.(*stringList)
	return ok
}

// refuseURLPassword refuses URLs (comma-separated ones too) carrying a
// password: nats://user:pass@host would put the password in the file.
func refuseURLPassword(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		if !strings.Contains(part, "://") {
			continue
		}
		if u, err := url.Parse(strings.TrimSpace(part)); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				return errors.New("a URL with a password: secrets never go in the config file; give the user and a password file")
			}
		}
	}
	return nil
}

// lookup is the value the file gives flag name of the command whose flag
// set is named cmd: its section's, else the top level's.
func (c *configFile) lookup(cmd, name string) (configValue, bool) {
	if c == nil {
		return configValue{}, false
	}
	if v, ok := c.sections[cmd][name]; ok {
		return v, true
	}
	v, ok := c.top[name]
	return v, ok
}

// apply sets flag f of fs from the file, reporting the file and line on a
// bad value.
func (c *configFile) apply(fs *flag.FlagSet, f *flag.Flag) (bool, error) {
	v, ok := c.lookup(fs.Name(), f.Name)
	if !ok {
		return false, nil
	}
	for _, s := range v.values {
		if err := fs.Set(f.Name, s); err != nil {
			return true, fmt.Errorf("config %s:%d: %s: %w", c.path, v.line, f.Name, err)
		}
	}
	return true, nil
}
