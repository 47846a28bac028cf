// Command ecrfake serves the ECR stand-in's API (integration/ecrfake) as a
// process, for integration/demo.sh: over a Distribution registry the caller
// runs with the given storage root and htpasswd file. It prints the API
// endpoint, the ecr:// URL and the registry token as shell assignments,
// then serves until killed.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/s3snap/s3snap/integration/ecrfake"
)

func main() {
	root := flag.String("root", "", "the registry's storage root directory")
	htpasswd := flag.String("htpasswd", "", "the registry's htpasswd file (written here)")
	addr := flag.String("addr", "127.0.0.1:0", "API listen address")
	registry := flag.String("registry", "", "the registry's URL, http://HOST:PORT (GetAuthorizationToken's proxyEndpoint)")
	flag.Parse()
	if *root == "" || *htpasswd == "" || *registry == "" {
		fmt.Fprintln(os.Stderr, "usage: ecrfake -root DIR -htpasswd FILE -registry http://HOST:PORT [-addr ADDR]")
		os.Exit(2)
	}
	// A page size above the demo's counts: paging is the tests' business.
	f, err := ecrfake.New(*root, *htpasswd, *addr, ecrfake.Options{PageSize: 100})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	f.SetProxyEndpoint(*registry)
	fmt.Printf("ECR_ENDPOINT=%s\nECR_URL=%s\nECR_HOST=%s\nECR_TOKEN=%s\n", f.Endpoint(), f.URL(), f.Host(), f.Token())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	_ = f.Close()
}
