package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"testing"
)

func runArgs(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), code
}

func TestRunUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"lss", "s3://b"}, `did you mean "ls"`},
		{[]string{"ls", "--nope", "s3://b"}, "unknown flag: --nope"},
		{[]string{"ls"}, "takes 1 argument"},
		{[]string{"ls", "s3://b", "s3://c"}, "takes 1 argument"},
		{[]string{"version", "extra"}, "takes no arguments"},
		{[]string{"-o", "yaml", "version"}, `--output "yaml"`},
		{[]string{"--log-level", "loud", "version"}, `--log-level "loud"`},
		{[]string{"--log-format", "xml", "version"}, `--log-format "xml": want text or json`},
		{[]string{"--endpoint", "127.0.0.1:9000", "ls", "s3://b"}, "want an http:// or https:// URL"},
		{[]string{"ls", "b/app"}, "want s3://bucket"},
		{[]string{"ls", "s3://"}, "no bucket"},
		{[]string{"ls", "s3://b/app:v1"}, "not a tag or digest"},
		{[]string{"inspect", "s3://b/app"}, "names no tag or digest"},
		{[]string{"inspect", "s3://b/app@sha256:12"}, "bad digest"},
		{[]string{"inspect", "s3://b:v1"}, "no bucket"},
		{[]string{"push", "dir"}, "takes 2 argument"},
		{[]string{"push", "dir", "s3://b/app"}, "names no tag"},
		{[]string{"push", "dir", "s3://b/app:bad tag"}, "invalid name"},
		{[]string{"push", "--jobs", "0", "dir", "s3://b/app:v1"}, "--jobs 0"},
		{[]string{"push", "--jobs", "many", "dir", "s3://b/app:v1"}, "invalid argument"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, errOut, code := runArgs(t, tc.args...)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitUsage, errOut)
			}
			if out != "" {
				t.Errorf("stdout not empty:\n%s", out)
			}
			first, _, _ := strings.Cut(errOut, "\n")
			if !strings.HasPrefix(first, "s3snap: ") || strings.Count(errOut, "s3snap: ") != 1 {
				t.Errorf("want one \"s3snap: <error>\" line, got:\n%s", errOut)
			}
			if !strings.Contains(first, tc.want) {
				t.Errorf("error %q lacks %q", first, tc.want)
			}
			if !strings.Contains(errOut, "--help' for usage") {
				t.Errorf("no pointer to --help:\n%s", errOut)
			}
		})
	}
}

func TestRunFailureIsExit1(t *testing.T) {
	// Fails before any S3 request: the directory is not an OCI layout.
	_, errOut, code := runArgs(t, "--endpoint", "http://127.0.0.1:1", "push", t.TempDir(), "s3://b/app:v1")
	if code != exitFailure || !strings.Contains(errOut, "not an OCI image layout") || strings.Contains(errOut, "--help") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
}

func TestRunHelp(t *testing.T) {
	out, _, code := runArgs(t, "--help")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, s := range []string{"Exit codes:", "2  usage error", "s3://BUCKET[/PREFIX][/REPOSITORY]", "--endpoint", "push"} {
		if !strings.Contains(out, s) {
			t.Errorf("root help lacks %q", s)
		}
	}
	for _, cmd := range []string{"ls", "inspect", "push", "version"} {
		out, _, code := runArgs(t, cmd, "--help")
		if code != exitOK || !strings.Contains(out, "Examples:") {
			t.Errorf("%s --help: exit %d, no examples:\n%s", cmd, code, out)
		}
	}
}

func TestVersionJSON(t *testing.T) {
	out, _, code := runArgs(t, "version", "-o", "json")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	var bi map[string]string
	if err := json.Unmarshal([]byte(out), &bi); err != nil || bi["version"] == "" || !strings.HasPrefix(bi["go"], "go") {
		t.Fatalf("version -o json = %q (%v)", out, err)
	}
}

func TestFillBuildInfo(t *testing.T) {
	info := &debug.BuildInfo{Main: debug.Module{Version: "v1.0.0"}, Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}}}
	for _, tc := range []struct {
		name string
		in   buildInfo
		info *debug.BuildInfo
		ok   bool
		want buildInfo
	}{
		{"ldflags win", buildInfo{Version: "v2", Commit: "def", Go: "go1"}, info, true, buildInfo{Version: "v2", Commit: "def", Go: "go1"}},
		{"from build info", buildInfo{Go: "go1"}, info, true, buildInfo{Version: "v1.0.0", Commit: "abc", Go: "go1"}},
		{"nothing known", buildInfo{Go: "go1"}, nil, false, buildInfo{Version: "(devel)", Go: "go1"}},
	} {
		if got := fillBuildInfo(tc.in, tc.info, tc.ok); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, exitOK},
		{errors.New("boom"), exitFailure},
		{usagef("bad"), exitUsage},
		{fmt.Errorf("wrapped: %w", usagef("bad")), exitUsage},
		{asUsage(errors.New("x")), exitUsage},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if asUsage(nil) != nil {
		t.Error("asUsage(nil) is not nil")
	}
}

func TestSplitPrefix(t *testing.T) {
	for _, tc := range []struct {
		path, prefix, want string
		err                bool
	}{
		{"team/app", "", "team/app", false},
		{"pfx/team/app", "pfx", "team/app", false},
		{"a/b/team/app", "a/b", "team/app", false},
		{"pfx", "pfx", "", false},
		{"", "", "", false},
		{"pfxx/app", "pfx", "", true},
		{"team/app", "pfx", "", true},
	} {
		got, err := splitPrefix(tc.path, tc.prefix)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("splitPrefix(%q, %q) = %q, %v; want %q, err=%v", tc.path, tc.prefix, got, err, tc.want, tc.err)
		}
		if err != nil && exitCode(err) != exitUsage {
			t.Errorf("splitPrefix(%q, %q) error is not a usage error", tc.path, tc.prefix)
		}
	}
}

func TestUsePathStyle(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	for _, tc := range []struct {
		name string
		g    globals
		env  map[string]string
		want bool
	}{
		{"aws default", globals{}, nil, false},
		{"endpoint flag", globals{endpoint: "http://x"}, nil, true},
		{"AWS_ENDPOINT_URL", globals{}, map[string]string{"AWS_ENDPOINT_URL": "http://x"}, true},
		{"AWS_ENDPOINT_URL_S3", globals{}, map[string]string{"AWS_ENDPOINT_URL_S3": "http://x"}, true},
		{"explicit off", globals{endpoint: "http://x", pathStyleSet: true}, nil, false},
		{"explicit on", globals{pathStyle: true, pathStyleSet: true}, nil, true},
	} {
		if got := tc.g.usePathStyle(env(tc.env)); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestValidateEndpoint(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"http://127.0.0.1:9000", true},
		{"https://s3.us-east-1.amazonaws.com", true},
		{"127.0.0.1:9000", false},
		{"ftp://host", false},
		{"http://", false},
		{"http://[::1", false},
	} {
		if err := validateEndpoint(tc.in); (err == nil) != tc.ok {
			t.Errorf("validateEndpoint(%q) = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestHumanSize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{20 << 20, "20.0 MiB"},
		{5 << 30, "5.0 GiB"},
		{1 << 62, "4.0 EiB"},
	} {
		if got := humanSize(tc.n); got != tc.want {
			t.Errorf("humanSize(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
