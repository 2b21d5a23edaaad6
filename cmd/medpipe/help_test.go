package main

import (
	"bytes"
	"context"
	"flag"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestHelpGroups checks that help lists every flag once, under headings in
// flagGroups' order, and that up's flags are spread over several groups.
func TestHelpGroups(t *testing.T) {
	heading := regexp.MustCompile(`(?m)^([A-Z][^:\n]*):$`)
	flagLine := regexp.MustCompile(`(?m)^  --([a-z0-9-]+) `)
	for _, c := range configuredCommands() {
		t.Run(c.name(), func(t *testing.T) {
			var out bytes.Buffer
			c.fs.SetOutput(&out)
			c.fs.Usage()
			help := out.String()
			var titles []string
			for _, m := range heading.FindAllStringSubmatch(help, -1) {
				titles = append(titles, m[1])
			}
			order := groupTitles()
			for i := 1; i < len(titles); i++ {
				if slices.Index(order, titles[i-1]) >= slices.Index(order, titles[i]) {
					t.Errorf("headings out of order: %v", titles)
				}
			}
			listed := map[string]int{}
			for _, m := range flagLine.FindAllStringSubmatch(help, -1) {
				listed[m[1]]++
			}
			c.fs.VisitAll(func(f *flag.Flag) {
				if listed[f.Name] != 1 {
					t.Errorf("--%s listed %d times", f.Name, listed[f.Name])
				}
			})
			if c.name() == "up" && len(titles) < 8 {
				t.Errorf("up's flags in %d groups, want them sorted by purpose: %v", len(titles), titles)
			}
			if !strings.Contains(help, "--config file") {
				t.Error("no --config")
			}
		})
	}
	// Group titles are unique and "Command" names only a command's own flags.
	seen := map[string]bool{}
	for _, g := range groupTitles() {
		if seen[g] {
			t.Errorf("group %q twice", g)
		}
		seen[g] = true
	}
	var out bytes.Buffer
	_ = run(context.Background(), []string{"up", "-h"}, &out, &out)
	if strings.Contains(out.String(), "\n"+groupCommand+":") {
		t.Errorf("up has flags in no group:\n%s", out.String())
	}
}
