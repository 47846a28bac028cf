package k8s

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// podIdentityAudience is the audience of the service account token EKS Pod
// Identity mounts into a pod.
const podIdentityAudience = "pods.eks.amazonaws.com"

// podIdentity stands in for the EKS Pod Identity agent: it answers the
// SDK's container credentials request (AWS_CONTAINER_CREDENTIALS_FULL_URI,
// the token file's content as Authorization) when the API server's
// TokenReview says the token is the service account's, with temporary
// credentials from MinIO's STS.
type podIdentity struct {
	url             string
	served, refused atomic.Int32
}

func startPodIdentity(t *testing.T, c *cluster, mi *minio, ns, serviceAccount string) *podIdentity {
	t.Helper()
	p := &podIdentity{}
	review := c.tokenReviewer(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, err := review(r.Header.Get("Authorization"))
		if err != nil || user != "system:serviceaccount:"+ns+":"+serviceAccount {
			p.refused.Add(1)
			http.Error(w, "not this service account's token", http.StatusForbidden)
			return
		}
		creds, err := mi.assumeRoleErr()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		p.served.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]string{
			"AccessKeyId": aws.ToString(creds.AccessKeyId), "SecretAccessKey": aws.ToString(creds.SecretAccessKey),
			"Token": aws.ToString(creds.SessionToken), "AccountId": "123456789012",
			"Expiration": aws.ToTime(creds.Expiration).UTC().Format(time.RFC3339),
		})
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL + "/v1/credentials"
	return p
}

// tokenReviewer returns a function asking the API server who a token with
// the Pod Identity audience belongs to.
func (c *cluster) tokenReviewer(t *testing.T) func(token string) (string, error) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.dir, "pki/admin.crt"), filepath.Join(c.dir, "pki/admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(c.dir, "pki/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots}}}
	url := "https://" + c.env["S3SNAP_K8S_API"] + "/apis/authentication.k8s.io/v1/tokenreviews"
	return func(token string) (string, error) {
		body, _ := json.Marshal(map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
			"spec": map[string]any{"token": token, "audiences": []string{podIdentityAudience}}})
		resp, err := client.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var out struct {
			Status struct {
				Authenticated bool
				User          struct{ Username string }
			}
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return "", err
		}
		if !out.Status.Authenticated {
			return "", nil
		}
		return out.Status.User.Username, nil
	}
}

// ask requests credentials with token, as the SDK does, and returns the
// status code.
func (p *podIdentity) ask(t *testing.T, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, p.url, nil)
	req.Header.Set("Authorization", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
