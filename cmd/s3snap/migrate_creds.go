package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// Environment variables holding registry credentials, USER:PASSWORD.
const (
	envSrcCreds = "S3SNAP_SRC_CREDS"
	envDstCreds = "S3SNAP_DST_CREDS"
)

// maxCredsFile bounds a credentials file: USER:PASSWORD (a registry token
// can be a few KiB), never anything large.
const maxCredsFile = 64 << 10

// credsFlags are a command's registry credentials for its source and
// destination: --src-creds/--dst-creds, --src-creds-file/--dst-creds-file,
// or $S3SNAP_SRC_CREDS/$S3SNAP_DST_CREDS, in that order of precedence. A
// flag's value is visible to every user in ps and often in CI logs; a file
// or the environment is not.
type credsFlags struct {
	src, dst credSource
}

// credSource is one side's credentials and where they came from.
type credSource struct {
	flag, env   string // "--src-creds", "S3SNAP_SRC_CREDS"
	value, file string // as given on the command line
	// creds is USER:PASSWORD once resolved ("" for none: the keychain).
	creds string
	// from names where creds came from for error messages, never the
	// value: --src-creds, --src-creds-file PATH or $S3SNAP_SRC_CREDS.
	from string
}

// register adds the flags; srcFor and dstFor say what each side's
// credentials are for ("a docker:// source").
func (c *credsFlags) register(fl *pflag.FlagSet, srcFor, dstFor string) {
	c.src = credSource{flag: "--src-creds", env: envSrcCreds}
	c.dst = credSource{flag: "--dst-creds", env: envDstCreds}
	for _, s := range []struct {
		cs      *credSource
		name    string
		forWhat string
	}{{&c.src, "src-creds", srcFor}, {&c.dst, "dst-creds", dstFor}} {
		fl.StringVar(&s.cs.value, s.name, "", fmt.Sprintf("USER:PASSWORD for %s (default: ~/.docker/config.json and credential helpers); "+
			"visible in ps and CI logs: prefer --%s-file or $%s", s.forWhat, s.name, s.cs.env))
		fl.StringVar(&s.cs.file, s.name+"-file", "", fmt.Sprintf("read USER:PASSWORD for %s from FILE (one line; keep it mode 0600)", s.forWhat))
	}
}

// explicit reports whether credentials were given on the command line (a
// flag or a file), as opposed to the ambient environment.
func (s *credSource) explicit() bool { return s.value != "" || s.file != "" }

// resolve reads each side's credentials: the flag, else the file, else the
// environment variable. A file readable by group or others is used, with a
// warning on warn. Nothing it writes or returns contains the credentials.
func (c *credsFlags) resolve(getenv func(string) string, warn io.Writer) error {
	for _, s := range []*credSource{&c.src, &c.dst} {
		if err := s.resolve(getenv, warn); err != nil {
			return err
		}
	}
	return nil
}

func (s *credSource) resolve(getenv func(string) string, warn io.Writer) error {
	switch {
	case s.value != "":
		s.creds, s.from = s.value, s.flag
	case s.file != "":
		b, err := readCredsFile(s.file, warn)
		if err != nil {
			return usagef("%s-file: %v", s.flag, err)
		}
		s.creds, s.from = b, s.flag+"-file "+s.file
	case getenv(s.env) != "":
		s.creds, s.from = getenv(s.env), "$"+s.env
	}
	if s.creds != "" {
		if user, _, ok := strings.Cut(s.creds, ":"); !ok || user == "" {
			return usagef("%s: want USER:PASSWORD", s.from)
		}
	}
	return nil
}

// readCredsFile reads USER:PASSWORD from path: its first line, without the
// line ending.
func readCredsFile(path string, warn io.Writer) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o044 != 0 {
		fmt.Fprintf(warn, "warning: %s is readable by other users (mode %04o): chmod 600 %s\n", path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxCredsFile+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxCredsFile {
		return "", fmt.Errorf("%s is larger than %d bytes: want one line, USER:PASSWORD", path, maxCredsFile)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimSuffix(line, "\r")
	if line == "" {
		return "", errors.New(path + " is empty: want one line, USER:PASSWORD")
	}
	return line, nil
}
