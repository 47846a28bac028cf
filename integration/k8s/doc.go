// Package k8s tests s3snap on a real one-node Kubernetes cluster that
// integration/k8s.sh builds and starts: kubelet pulls through the agent
// (eager, lazy, falling back to the registry), the agent gets instance
// credentials from a metadata service, kubelet's image GC reclaims what the
// agent holds, and the migrator runs as the README's Indexed Job. The
// cluster comes up once per `go test` run, on the first test that needs it,
// and goes down when the run ends.
package k8s
