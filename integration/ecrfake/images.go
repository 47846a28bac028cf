package ecrfake

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

type imageDetail struct {
	RegistryID             string   `json:"registryId"`
	RepositoryName         string   `json:"repositoryName"`
	ImageDigest            string   `json:"imageDigest"`
	ImageTags              []string `json:"imageTags,omitempty"`
	ImageSizeInBytes       int64    `json:"imageSizeInBytes"`
	ImagePushedAt          float64  `json:"imagePushedAt"`
	ImageManifestMediaType string   `json:"imageManifestMediaType,omitempty"`
}

func (f *Fake) describeImages(body []byte) (any, error) {
	var in struct {
		RepositoryName string `json:"repositoryName"`
		NextToken      string `json:"nextToken"`
		MaxResults     int    `json:"maxResults"`
		Filter         struct {
			TagStatus string `json:"tagStatus"`
		} `json:"filter"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, &apiError{"SerializationException", err.Error()}
	}
	repos, err := f.repositories()
	if err != nil {
		return nil, err
	}
	if i := sort.SearchStrings(repos, in.RepositoryName); i == len(repos) || repos[i] != in.RepositoryName {
		return nil, &apiError{"RepositoryNotFoundException", fmt.Sprintf("The repository with name '%s' does not exist in the registry with id '%s'", in.RepositoryName, f.Account)}
	}
	all, err := f.images(in.RepositoryName)
	if err != nil {
		return nil, err
	}
	var images []imageDetail
	for _, im := range all {
		switch in.Filter.TagStatus {
		case "TAGGED":
			if len(im.ImageTags) == 0 {
				continue
			}
		case "UNTAGGED":
			if len(im.ImageTags) > 0 {
				continue
			}
		}
		images = append(images, im)
	}
	from, to, next, err := f.page(len(images), in.NextToken, in.MaxResults)
	if err != nil {
		return nil, err
	}
	out := map[string]any{"imageDetails": images[from:to]}
	if next != "" {
		out["nextToken"] = next
	}
	return out, nil
}

// images reads every manifest revision of repo from the registry's storage,
// with its tags: what ECR's DescribeImages lists.
func (f *Fake) images(repo string) ([]imageDetail, error) {
	v2 := filepath.Join(f.root, "docker", "registry", "v2")
	mdir := filepath.Join(v2, "repositories", filepath.FromSlash(repo), "_manifests")
	revs, err := os.ReadDir(filepath.Join(mdir, "revisions", "sha256"))
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	tags := map[string][]string{}
	tagDirs, _ := os.ReadDir(filepath.Join(mdir, "tags"))
	for _, t := range tagDirs {
		b, err := os.ReadFile(filepath.Join(mdir, "tags", t.Name(), "current", "link"))
		if err == nil {
			d := strings.TrimSpace(string(b))
			tags[d] = append(tags[d], t.Name())
		}
	}
	var out []imageDetail
	for _, r := range revs {
		d := "sha256:" + r.Name()
		raw, err := os.ReadFile(filepath.Join(v2, "blobs", "sha256", r.Name()[:2], r.Name(), "data"))
		if err != nil {
			continue // deleted
		}
		fi, _ := os.Stat(filepath.Join(mdir, "revisions", "sha256", r.Name(), "link"))
		pushed := time.Now()
		if fi != nil {
			pushed = fi.ModTime()
		}
		f.mu.Lock()
		if t, ok := f.pushedAt[repo+"@"+d]; ok {
			pushed = t
		}
		f.mu.Unlock()
		var m struct {
			MediaType string `json:"mediaType"`
			Config    struct {
				Size int64 `json:"size"`
			} `json:"config"`
			Layers []struct {
				Size int64 `json:"size"`
			} `json:"layers"`
			Manifests []struct {
				Size int64 `json:"size"`
			} `json:"manifests"`
		}
		_ = json.Unmarshal(raw, &m)
		size := m.Config.Size
		for _, l := range m.Layers {
			size += l.Size
		}
		sort.Strings(tags[d])
		out = append(out, imageDetail{RegistryID: f.Account, RepositoryName: repo, ImageDigest: d, ImageTags: tags[d],
			ImageSizeInBytes: size, ImagePushedAt: epoch(pushed), ImageManifestMediaType: m.MediaType})
	}
	return out, nil
}
