package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestCredsSources: registry credentials come from the flag, else the
// file, else the environment; a file readable by others is warned about;
// no message ever contains a password.
func TestCredsSources(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	private := file("private", "fileuser:filepass\n", 0o600)
	crlf := file("crlf", "crlfuser:crlfpass\r\n", 0o600)
	shared := file("shared", "shareduser:sharedpass", 0o644)
	empty := file("empty", "\n", 0o600)
	noColon := file("nocolon", "justatoken-s3cr3t\n", 0o600)
	env := map[string]string{envSrcCreds: "envuser:envpass", envDstCreds: "envdst:envdstpass"}
	for _, tc := range []struct {
		name     string
		args     []string
		env      map[string]string
		src, dst string // resolved USER:PASSWORD
		srcFrom  string
		warn     string // in the warnings
		err      string // in the error
	}{
		{name: "none", src: "", dst: ""},
		{name: "environment", env: env, src: "envuser:envpass", dst: "envdst:envdstpass", srcFrom: "$" + envSrcCreds},
		{name: "file over environment", args: []string{"--src-creds-file", private}, env: env,
			src: "fileuser:filepass", dst: "envdst:envdstpass", srcFrom: "--src-creds-file " + private},
		{name: "flag over file and environment", args: []string{"--src-creds", "flaguser:flagpass", "--src-creds-file", private}, env: env,
			src: "flaguser:flagpass", dst: "envdst:envdstpass", srcFrom: "--src-creds"},
		{name: "dst file", args: []string{"--dst-creds-file", crlf}, dst: "crlfuser:crlfpass"},
		{name: "file readable by others", args: []string{"--src-creds-file", shared}, src: "shareduser:sharedpass", warn: "readable by other users (mode 0644): chmod 600 " + shared},
		{name: "missing file", args: []string{"--src-creds-file", filepath.Join(dir, "nope")}, err: "--src-creds-file: open"},
		{name: "empty file", args: []string{"--dst-creds-file", empty}, err: "is empty"},
		{name: "file without a user", args: []string{"--src-creds-file", noColon}, err: "--src-creds-file " + noColon + ": want USER:PASSWORD"},
		{name: "environment without a user", env: map[string]string{envDstCreds: ":s3cr3t"}, err: "$" + envDstCreds + ": want USER:PASSWORD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c credsFlags
			fl := pflag.NewFlagSet("test", pflag.ContinueOnError)
			c.register(fl, "a source", "a destination")
			if err := fl.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			var warn bytes.Buffer
			err := c.resolve(func(k string) string { return tc.env[k] }, &warn)
			for _, secret := range []string{"pass", "s3cr3t"} {
				if strings.Contains(warn.String(), secret) || err != nil && strings.Contains(err.Error(), secret) {
					t.Errorf("a password leaked: warning %q, error %v", warn.String(), err)
				}
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.src.creds != tc.src || c.dst.creds != tc.dst {
				t.Errorf("creds src %q dst %q, want %q %q", c.src.creds, c.dst.creds, tc.src, tc.dst)
			}
			if tc.srcFrom != "" && c.src.from != tc.srcFrom {
				t.Errorf("src from %q, want %q", c.src.from, tc.srcFrom)
			}
			if !strings.Contains(warn.String(), tc.warn) || tc.warn == "" && warn.Len() > 0 {
				t.Errorf("warnings %q, want %q", warn.String(), tc.warn)
			}
		})
	}
}

// TestCredsHelp: --help of migrate, verify and push offers the file and
// the environment and says why to prefer them.
func TestCredsHelp(t *testing.T) {
	for _, cmd := range []string{"migrate", "verify", "push"} {
		out, _, code := runArgs(t, cmd, "--help")
		if code != 0 {
			t.Fatalf("%s --help: exit %d", cmd, code)
		}
		for _, want := range []string{"--src-creds-file", "--dst-creds-file", "$" + envSrcCreds, "visible in ps"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s --help lacks %q", cmd, want)
			}
		}
	}
}
