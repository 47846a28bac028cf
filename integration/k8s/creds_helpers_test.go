package k8s

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"

	"github.com/s3snap/s3snap/integration/testenv"
)

// minio is a MinIO server a test started: an S3 server whose STS
// AssumeRole issues temporary credentials (with a session token) that its
// S3 API really checks, which versitygw cannot.
type minio struct {
	endpoint           string
	rootUser, rootPass string
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func startMinIO(t *testing.T) *minio {
	t.Helper()
	dir, err := k8sBinDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "minio")
	if _, err := os.Stat(bin); err != nil {
		testenv.Unavailable(t, "%s not built (integration/k8s.sh install)", bin)
	}
	m := &minio{rootUser: "root" + randomHex(t, 4), rootPass: randomHex(t, 16)}
	addr, console := testenv.FreeAddr(t), testenv.FreeAddr(t)
	m.endpoint = "http://" + addr
	data := t.TempDir()
	p := testenv.Start(t, "minio", []string{"MINIO_ROOT_USER=" + m.rootUser, "MINIO_ROOT_PASSWORD=" + m.rootPass,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "HOME=" + data},
		bin, "server", filepath.Join(data, "data"), "--address", addr, "--console-address", console, "--quiet")
	testenv.WaitFor(t, p, 60*time.Second, "minio at "+addr, func() bool {
		resp, err := http.Get(m.endpoint + "/minio/health/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return m
}

// client is an S3 client with the root user's keys.
func (m *minio) client(endpoint string) *s3.Client {
	return s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(m.rootUser, m.rootPass, "")})
}

func (m *minio) bucket(t *testing.T, name string) {
	t.Helper()
	if _, err := m.client(m.endpoint).CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: &name}); err != nil {
		t.Fatalf("create bucket %s on minio: %v", name, err)
	}
}

// assumeRole asks MinIO's STS for temporary credentials (15 minutes,
// its shortest).
func (m *minio) assumeRole(t *testing.T) ststypes.Credentials {
	t.Helper()
	creds, err := m.assumeRoleErr()
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

func (m *minio) assumeRoleErr() (ststypes.Credentials, error) {
	c := sts.New(sts.Options{Region: "us-east-1", BaseEndpoint: aws.String(m.endpoint),
		Credentials: credentials.NewStaticCredentialsProvider(m.rootUser, m.rootPass, "")})
	out, err := c.AssumeRole(context.Background(), &sts.AssumeRoleInput{
		RoleArn: aws.String("arn:aws:iam::123456789012:role/s3snap-node"), RoleSessionName: aws.String("s3snap-test"),
		DurationSeconds: aws.Int32(900)})
	if err != nil {
		return ststypes.Credentials{}, fmt.Errorf("minio sts AssumeRole: %w", err)
	}
	if out.Credentials == nil || aws.ToString(out.Credentials.SessionToken) == "" {
		return ststypes.Credentials{}, fmt.Errorf("minio sts AssumeRole gave no session credentials: %+v", out.Credentials)
	}
	return *out.Credentials, nil
}

// keyRecorder is a reverse proxy in front of an S3 server that records the
// access key id of each request's SigV4 signature and any answer refusing
// it (403), Host kept so signatures stay valid.
type keyRecorder struct {
	url    string
	mu     sync.Mutex
	keys   []string // in order, repeats folded
	counts map[string]int
	denied int
}

var credentialRE = regexp.MustCompile(`Credential=([^/]+)/`)

func startKeyRecorder(t *testing.T, target string) *keyRecorder {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	r := &keyRecorder{counts: map[string]int{}}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
			if m := credentialRE.FindStringSubmatch(pr.In.Header.Get("Authorization")); m != nil {
				r.mu.Lock()
				if len(r.keys) == 0 || r.keys[len(r.keys)-1] != m[1] {
					r.keys = append(r.keys, m[1])
				}
				r.counts[m[1]]++
				r.mu.Unlock()
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusBadRequest {
				r.mu.Lock()
				r.denied++
				r.mu.Unlock()
			}
			return nil
		},
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

func (r *keyRecorder) snapshot() (keys []string, counts map[string]int, denied int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	counts = map[string]int{}
	for k, v := range r.counts {
		counts[k] = v
	}
	return append([]string(nil), r.keys...), counts, r.denied
}

// imdsMock is AWS's ec2-metadata-mock serving IMDSv2 only, its role
// credentials from a JSON config it re-reads when the file changes.
type imdsMock struct {
	url, config string
}

const imdsRole = "s3snap-node"

func startIMDS(t *testing.T, creds ststypes.Credentials, expires time.Time) *imdsMock {
	t.Helper()
	dir, err := k8sBinDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "ec2-metadata-mock")
	if _, err := os.Stat(bin); err != nil {
		testenv.Unavailable(t, "%s not built (integration/k8s.sh install)", bin)
	}
	home := t.TempDir()
	m := &imdsMock{config: filepath.Join(home, "imds.json")}
	m.write(t, creds, expires)
	addr := testenv.FreeAddr(t)
	host, port, _ := splitHostPort(addr)
	m.url = "http://" + addr
	p := testenv.Start(t, "ec2-metadata-mock", []string{"HOME=" + home}, bin, "-I", "-n", host, "-p", port, "-c", m.config, "-w")
	testenv.WaitFor(t, p, 30*time.Second, "ec2-metadata-mock at "+addr, func() bool {
		got, err := m.credentials()
		return err == nil && got.AccessKeyId == aws.ToString(creds.AccessKeyId)
	})
	return m
}

func splitHostPort(addr string) (host, port string, err error) {
	u, err := url.Parse("http://" + addr)
	if err != nil {
		return "", "", err
	}
	return u.Hostname(), u.Port(), nil
}

// write puts creds in the config, said to expire at expires (not when
// MinIO expires them: that is what the SDK refreshes by).
func (m *imdsMock) write(t *testing.T, creds ststypes.Credentials, expires time.Time) {
	t.Helper()
	cfg := map[string]any{"metadata": map[string]any{
		"paths": map[string]any{"iam-security-credentials": "/latest/meta-data/iam/security-credentials/" + imdsRole},
		"values": map[string]any{
			"iam-security-credentials-role": imdsRole,
			"iam-security-credentials": map[string]any{
				"Code": "Success", "Type": "AWS-HMAC", "LastUpdated": time.Now().UTC().Format(time.RFC3339),
				"AccessKeyId": aws.ToString(creds.AccessKeyId), "SecretAccessKey": aws.ToString(creds.SecretAccessKey),
				"Token": aws.ToString(creds.SessionToken), "Expiration": expires.UTC().Format(time.RFC3339),
			},
		},
	}}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tmp := m.config + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, m.config); err != nil {
		t.Fatal(err)
	}
}

type imdsCreds struct{ AccessKeyId, Expiration string }

// credentials asks the mock as the SDK does: a session token, then the
// role's credentials.
func (m *imdsMock) credentials() (imdsCreds, error) {
	req, _ := http.NewRequest(http.MethodPut, m.url+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return imdsCreds{}, err
	}
	token, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return imdsCreds{}, fmt.Errorf("imds token: %s", resp.Status)
	}
	req, _ = http.NewRequest(http.MethodGet, m.url+"/latest/meta-data/iam/security-credentials/"+imdsRole, nil)
	req.Header.Set("X-aws-ec2-metadata-token", string(token))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return imdsCreds{}, err
	}
	defer resp.Body.Close()
	var c imdsCreds
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		return imdsCreds{}, fmt.Errorf("imds credentials (%s): %w", resp.Status, err)
	}
	return c, nil
}

// serve replaces the credentials the mock hands out and waits until it
// does.
func (m *imdsMock) serve(t *testing.T, creds ststypes.Credentials, expires time.Time) {
	t.Helper()
	m.write(t, creds, expires)
	testenv.WaitFor(t, nil, 30*time.Second, "ec2-metadata-mock to serve the new credentials", func() bool {
		got, err := m.credentials()
		return err == nil && got.AccessKeyId == aws.ToString(creds.AccessKeyId)
	})
}
