package config

import (
	"errors"
	"strings"
	"testing"
)

func TestLazyConfig(t *testing.T) {
	const registry = "\n[[registry]]\nhost = \"registry.example.com\"\nstore = \"s3://bucket/prefix\"\n"
	tests := []struct {
		name    string
		toml    string
		enabled bool
		err     error
	}{
		{"off by default", registry, false, nil},
		{"on", "[lazy]\nenabled = true\n" + registry, true, nil},
		{"unknown key", "[lazy]\nenable = true\n" + registry, false, ErrInvalidConfig},
		{"not a bool", "[lazy]\nenabled = \"yes\"\n" + registry, false, ErrInvalidConfig},
		{"external server", "[lazy]\nenabled = true\nserver = \"external\"\n" + registry, true, nil},
		{"server by the agent", "[lazy]\nenabled = true\nserver = \"agent\"\n" + registry, true, nil},
		{"unknown server", "[lazy]\nenabled = true\nserver = \"systemd\"\n" + registry, false, ErrInvalidConfig},
		{"root too long for the server's socket", "root = \"/" + strings.Repeat("r", 95) + "\"\n[lazy]\nenabled = true\n" + registry, false, ErrInvalidConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.toml))
			if !errors.Is(err, tc.err) {
				t.Fatalf("parse: %v, want %v", err, tc.err)
			}
			if err == nil && cfg.Lazy.Enabled != tc.enabled {
				t.Errorf("lazy enabled = %v, want %v", cfg.Lazy.Enabled, tc.enabled)
			}
		})
	}
}
