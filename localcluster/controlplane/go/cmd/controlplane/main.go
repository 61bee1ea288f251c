// Command controlplane is a multi-call binary holding the Kubernetes
// components the local cluster runs (kube-apiserver, kube-controller-manager,
// kube-scheduler, etcd and kubelet), built from their published modules so
// the tests run against the real thing. One binary instead of five: they
// share most of their dependencies, so this saves build time (one link
// instead of five) and disk.
//
// Usage: controlplane kube-apiserver|kube-controller-manager|kube-scheduler|etcd|kubelet [flags...]
// (or through a symlink named after the command).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var commands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
}

func main() {
	name, args := filepath.Base(os.Args[0]), os.Args[1:]
	if !known(name) {
		if len(args) == 0 {
			usage()
		}
		name, args = args[0], args[1:]
	}
	if name == "etcd" {
		// etcdmain parses args[1:] itself and exits on its own.
		etcdmain.Main(append([]string{"etcd"}, args...))
		return
	}
	command, ok := commands[name]
	if !ok {
		usage()
	}
	cmd := command()
	cmd.SetArgs(args)
	os.Exit(cli.Run(cmd))
}

func known(name string) bool {
	_, ok := commands[name]
	return ok || name == "etcd"
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: controlplane kube-apiserver|kube-controller-manager|kube-scheduler|etcd|kubelet [flags...]")
	os.Exit(2)
}
