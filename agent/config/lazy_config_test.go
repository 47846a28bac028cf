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
		verify  bool
		err     error
	}{
		{"off by default", registry, false, false, nil},
		{"on", "[lazy]\nenabled = true\n" + registry, true, false, nil},
		{"verified before start", "[lazy]\nenabled = true\nverify_before_start = true\n" + registry, true, true, nil},
		{"unknown key", "[lazy]\nenable = true\n" + registry, false, false, ErrInvalidConfig},
		{"not a bool", "[lazy]\nenabled = \"yes\"\n" + registry, false, false, ErrInvalidConfig},
		{"external server", "[lazy]\nenabled = true\nserver = \"external\"\n" + registry, true, false, nil},
		{"server by the agent", "[lazy]\nenabled = true\nserver = \"agent\"\n" + registry, true, false, nil},
		{"unknown server", "[lazy]\nenabled = true\nserver = \"systemd\"\n" + registry, false, false, ErrInvalidConfig},
		{"root too long for the server's socket", "root = \"/" + strings.Repeat("r", 95) + "\"\n[lazy]\nenabled = true\n" + registry, false, false, ErrInvalidConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.toml))
			if !errors.Is(err, tc.err) {
				t.Fatalf("parse: %v, want %v", err, tc.err)
			}
			if err == nil && (cfg.Lazy.Enabled != tc.enabled || cfg.Lazy.VerifyBeforeStart != tc.verify) {
				t.Errorf("lazy enabled = %v, verify_before_start = %v, want %v, %v", cfg.Lazy.Enabled, cfg.Lazy.VerifyBeforeStart, tc.enabled, tc.verify)
			}
		})
	}
}
