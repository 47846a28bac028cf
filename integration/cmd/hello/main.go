// Command hello is the program test images run: it prints a greeting and
// the sha256 of each file named on the command line, so a test can check
// from inside a running container that every layer landed intact. With
// HELLO_WAIT set it then stays up until SIGTERM, as a Deployment's pod must.
package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	fmt.Println("hello from s3snap")
	status := 0
	for _, name := range os.Args[1:] {
		f, err := os.Open(name)
		if err != nil {
			fmt.Printf("%s: %v\n", name, err)
			status = 1
			continue
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			fmt.Printf("%s: %v\n", name, err)
			status = 1
			continue
		}
		fmt.Printf("%x  %s\n", h.Sum(nil), name)
	}
	if os.Getenv("HELLO_WAIT") != "" {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
	}
	os.Exit(status)
}
