package systemd

import (
	"os"
	"path/filepath"
)

// Inflaters are the external gzip decoders containerd's decompression
// (github.com/containerd/containerd/v2/pkg/archive/compression), and with
// it the agent's eager unpack, uses when one is on PATH, fastest first:
// ISA-L's igzip inflates a layer ~3x faster than Go's compress/gzip, pigz's
// unpigz ~1.3x. Without either, Go's own is used. Setting
// CONTAINERD_DISABLE_IGZIP / CONTAINERD_DISABLE_PIGZ turns one off.
var Inflaters = []string{"igzip", "unpigz"}

// InflaterHint says how to get the fastest gzip decoder onto a node, or ""
// when igzip is already installed in root (a node's /, or an image tree at
// bake time).
func InflaterHint(root string) string {
	found := FindInflater(root)
	if found == "igzip" {
		return ""
	}
	have := "Go's own gzip (no igzip or unpigz on PATH)"
	if found != "" {
		have = "unpigz"
	}
	return "layers inflate with " + have + "; ISA-L's igzip is ~3x faster than Go's and used when on PATH: " +
		"Debian/Ubuntu `apt-get install isal`; Amazon Linux 2023/2 carry no igzip package: build ISA-L " +
		"(github.com/intel/isa-l: ./autogen.sh && ./configure --prefix=/usr && make install, needs nasm) " +
		"at bake time, or install pigz (unpigz, ~1.3x) where the distribution packages it"
}

// FindInflater returns the first of Inflaters found in root's usual
// binary directories, or "".
func FindInflater(root string) string {
	for _, name := range Inflaters {
		for _, dir := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
			if fi, err := os.Stat(filepath.Join(root, dir, name)); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
				return name
			}
		}
	}
	return ""
}
