// Command hello is the program test images run: it prints a greeting and
// the sha256 of each file named on the command line, so a test can check
// from inside a running container that every layer landed intact. With
// HELLO_WAIT set it then stays up until SIGTERM, as a Deployment's pod must.
//
// With --loop first, it hashes the files over and over until SIGTERM,
// dropping each file's cached pages before reading it (so every pass
// reads through the file system again, not from the page cache): it
// prints each file's first hash ("HASH <sha256>  <name>"), every failed
// read ("FAIL <name>: <error>") and every hash that differs from the
// first ("BAD <name> <sha256>"), a count line each second, and at SIGTERM
// "DONE reads=N failed=N bad=N".
package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	fmt.Println("hello from s3snap")
	if len(os.Args) > 1 && os.Args[1] == "--loop" {
		loop(os.Args[2:])
		return
	}
	status := 0
	for _, name := range os.Args[1:] {
		sum, err := hash(name, false)
		if err != nil {
			fmt.Printf("%s: %v\n", name, err)
			status = 1
			continue
		}
		fmt.Printf("%x  %s\n", sum, name)
	}
	if os.Getenv("HELLO_WAIT") != "" {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
	}
	os.Exit(status)
}

func hash(name string, uncached bool) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if uncached {
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			return nil, fmt.Errorf("fadvise: %w", err)
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

func loop(names []string) {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	first := map[string]string{}
	var reads, failed, bad int
	tick := time.NewTicker(time.Second)
	for {
		for _, name := range names {
			sum, err := hash(name, true)
			reads++
			switch {
			case err != nil:
				failed++
				fmt.Printf("FAIL %s: %v\n", name, err)
			case first[name] == "":
				first[name] = fmt.Sprintf("%x", sum)
				fmt.Printf("HASH %x  %s\n", sum, name)
			case first[name] != fmt.Sprintf("%x", sum):
				bad++
				fmt.Printf("BAD %s %x\n", name, sum)
			}
		}
		select {
		case <-stop:
			fmt.Printf("DONE reads=%d failed=%d bad=%d\n", reads, failed, bad)
			return
		case <-tick.C:
			fmt.Printf("reads=%d failed=%d bad=%d\n", reads, failed, bad)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
