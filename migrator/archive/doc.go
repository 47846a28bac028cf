// Package archive reads images from files for the migrator: OCI image
// layout directories, tars of them (buildx --output type=oci, docker save
// from Docker 25 on) and legacy docker save tars, each as a
// migrator.Source; DetectKind tells them apart. Every size, count and name
// in an archive is bounded and checked: its bytes are untrusted.
package archive

import "github.com/s3snap/s3snap/migrator"

// Both kinds of file are sources of the copy engine.
var (
	_ migrator.Source = (*Layout)(nil)
	_ migrator.Source = (*Archive)(nil)
)
