// Package lifecycle is deleting from a store: rm (a tag, or a manifest and
// its tags), gc (sweep what no tag reaches) and prune (expire old tags).
//
// rm and prune only remove links: a tag's current and index links, a
// manifest's revision link. Blobs (layers, configs, manifests) are shared
// between repositories and images, so only gc, which marks everything
// every tag reaches, deletes them.
package lifecycle
