package systemd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestInflaterHint(t *testing.T) {
	tests := []struct {
		name    string
		install []string // executables put in the root's /usr/bin
		want    string   // in the hint; "" means no hint
	}{
		{name: "igzip", install: []string{"igzip", "unpigz"}, want: ""},
		{name: "unpigz only", install: []string{"unpigz"}, want: "layers inflate with unpigz"},
		{name: "neither", want: "Go's own gzip"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			bin := filepath.Join(root, "usr", "bin")
			if err := os.MkdirAll(bin, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, name := range tc.install {
				if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			// Not executable: not an inflater.
			if err := os.WriteFile(filepath.Join(bin, "pigz-notes"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			h := InflaterHint(root)
			if tc.want == "" {
				if h != "" {
					t.Fatalf("hint %q with igzip installed", h)
				}
				return
			}
			if !strings.Contains(h, tc.want) || !strings.Contains(h, "apt-get install isal") || !strings.Contains(h, "Amazon Linux") {
				t.Fatalf("hint %q: want it to say %q and how to install igzip", h, tc.want)
			}
		})
	}
}
