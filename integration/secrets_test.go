package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/crypto/bcrypt"

	"github.com/s3snap/s3snap/integration/testenv"
)

// TestMigrateCredsOffTheCommandLine: migrate reads a password-protected
// registry's credentials from --src-creds-file or $S3SNAP_SRC_CREDS, so
// they never appear in its arguments (ps, CI logs), and never prints them.
func TestMigrateCredsOffTheCommandLine(t *testing.T) {
	const user, pass = "ci-bot", "pa55-never-shown"
	e := testenv.S3(t)
	hp := filepath.Join(t.TempDir(), "htpasswd")
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, hp, []byte(user+":"+string(h)+"\n"))
	reg := testenv.StartAuthRegistry(t, t.TempDir(), hp)
	im := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "secret-app", Data: []byte("behind a password")}})
	regPusher{addr: reg.Addr, auth: authn.FromConfig(authn.AuthConfig{Username: user, Password: pass})}.image(t, "team/app", "v1", im)

	credsFile := filepath.Join(t.TempDir(), "creds")
	writeFile(t, credsFile, []byte(user+":"+pass+"\n"))
	if err := os.Chmod(credsFile, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		ok   bool
	}{
		{name: "no credentials", ok: false},
		{name: "file", args: []string{"--src-creds-file", credsFile}, ok: true},
		{name: "environment", env: []string{"S3SNAP_SRC_CREDS=" + user + ":" + pass}, ok: true},
		{name: "wrong password in the environment", env: []string{"S3SNAP_SRC_CREDS=" + user + ":wrong"}, ok: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bucket := e.NewBucket(t)
			cli := newMigrateCLI(t, e)
			cli.env = append(cli.env, tc.env...)
			args := append([]string{"migrate"}, tc.args...)
			args = append(args, "docker://"+reg.Addr+"/team/app:v1", "s3://"+bucket)
			out, errOut, code := cli.run(t, args...)
			if (code == 0) != tc.ok {
				t.Errorf("exit %d, want success %v", code, tc.ok)
			}
			if strings.Contains(out+errOut, pass) {
				t.Error("the password appears in migrate's output")
			}
			for _, a := range args {
				if strings.Contains(a, pass) {
					t.Errorf("the password is in the command line: %q", a)
				}
			}
		})
	}
}
