package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseAlso(t *testing.T) {
	for _, tc := range []struct {
		values []string
		tag    string
		want   []string
		err    string
	}{
		{[]string{"docker://127.0.0.1:5000/team/app"}, "v1", []string{"docker://127.0.0.1:5000/team/app:v1"}, ""},
		{[]string{"docker://r.example.com/app:v2", "docker://other.example.com/x/app"}, "v1",
			[]string{"docker://r.example.com/app:v2", "docker://other.example.com/x/app:v1"}, ""},
		{[]string{"docker://r.example.com/app"}, "", []string{"docker://r.example.com/app"}, ""},
		{[]string{"s3://b/app"}, "v1", nil, "want docker://"},
		{[]string{"ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com/app"}, "v1", nil, "want docker://"},
		{[]string{"docker://r.example.com"}, "v1", nil, "names no repository"},
		{[]string{"docker://r.example.com/app@sha256:" + strings.Repeat("a", 64)}, "v1", nil, "not a digest"},
		{[]string{"docker://r.example.com/App"}, "v1", nil, "repository"},
		{[]string{"r.example.com/app"}, "v1", nil, "want ecr://, docker:// or s3://"},
		{[]string{"docker://r.example.com/app", "docker://r.example.com/app:v1"}, "v1", nil, "given twice"},
	} {
		t.Run(strings.Join(tc.values, " "), func(t *testing.T) {
			got, err := parseAlso(tc.values, tc.tag)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || exitCode(err) != exitUsage {
					t.Fatalf("err = %v, want a usage error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, d := range got {
				names = append(names, d.String())
			}
			if strings.Join(names, " ") != strings.Join(tc.want, " ") {
				t.Errorf("got %v, want %v", names, tc.want)
			}
		})
	}
}

func TestPushUsageErrors(t *testing.T) {
	layout := t.TempDir()
	if err := os.WriteFile(filepath.Join(layout, "index.json"), []byte(`{"schemaVersion":2,"manifests":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"push", "--also", "s3://b/x", layout, "s3://b/app:v1"}, "want docker://"},
		{[]string{"push", "oci://x", "s3://b/app:v1"}, `unknown scheme "oci"`},
		{[]string{"push", "--ref", "a:v1", "docker://r.example.com/app:v1", "s3://b/app:v1"}, "--ref selects"},
		{[]string{"push", "docker://r.example.com", "s3://b/app:v1"}, "names no repository"},
		{[]string{"push", "--src-creds", "u:p", layout, "s3://b/app:v1"}, "--src-creds is for a docker:// SRC"},
		{[]string{"push", "--dst-creds", "nopassword", "--also", "docker://r.example.com/app", layout, "s3://b/app:v1"}, "--dst-creds: want USER:PASSWORD"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, errOut, code := runArgs(t, append([]string{"--endpoint", "http://127.0.0.1:1"}, tc.args...)...)
			if code != exitUsage || out != "" || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, want %d and %q\nstdout:\n%s\nstderr:\n%s", code, exitUsage, tc.want, out, errOut)
			}
		})
	}
}
