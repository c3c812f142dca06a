//go:build tools

// Package tools pins Helm for FerryLB's chart tests: tests/env/build-helm
// builds helm.sh/helm/v3/cmd/helm at the version go.mod names.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
