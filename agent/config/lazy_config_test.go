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
		cache   Size
	}{
		{"off by default", registry, false, false, nil, 0},
		{"on", "[lazy]\nenabled = true\n" + registry, true, false, nil, 0},
		{"verified before start", "[lazy]\nenabled = true\nverify_before_start = true\n" + registry, true, true, nil, 0},
		{"unknown key", "[lazy]\nenable = true\n" + registry, false, false, ErrInvalidConfig, 0},
		{"not a bool", "[lazy]\nenabled = \"yes\"\n" + registry, false, false, ErrInvalidConfig, 0},
		{"external server", "[lazy]\nenabled = true\nserver = \"external\"\n" + registry, true, false, nil, 0},
		{"server by the agent", "[lazy]\nenabled = true\nserver = \"agent\"\n" + registry, true, false, nil, 0},
		{"unknown server", "[lazy]\nenabled = true\nserver = \"systemd\"\n" + registry, false, false, ErrInvalidConfig, 0},
		{"root too long for the server's socket", "root = \"/" + strings.Repeat("r", 95) + "\"\n[lazy]\nenabled = true\n" + registry, false, false, ErrInvalidConfig, 0},
		{"cache limit as a size string", "[lazy]\nenabled = true\ncache_max_bytes = \"2GiB\"\n" + registry, true, false, nil, 2 << 30},
		{"cache limit in bytes", "[lazy]\nenabled = true\ncache_max_bytes = 8388608\n" + registry, true, false, nil, 8 << 20},
		{"cache limit too small", "[lazy]\nenabled = true\ncache_max_bytes = \"1MiB\"\n" + registry, false, false, ErrInvalidConfig, 0},
		{"cache limit not a size", "[lazy]\nenabled = true\ncache_max_bytes = \"lots\"\n" + registry, false, false, ErrInvalidConfig, 0},
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
			if err == nil && cfg.Lazy.CacheMaxBytes != tc.cache {
				t.Errorf("cache_max_bytes = %d, want %d", cfg.Lazy.CacheMaxBytes, tc.cache)
			}
		})
	}
}
