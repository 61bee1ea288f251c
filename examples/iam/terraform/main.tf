# The AWS side of podiam, equivalent to the Kiam guide's first chapter:
# the operator's role (trusted by the cluster's node role) allowed to assume
# pod roles, and one pod role (the guide's KiamTesterRole) that trusts it.

variable "node_role_arn" {
  description = "ARN of the role the EKS nodes run with (kubectl describe configmap -n kube-system aws-auth)."
  type        = string
}

variable "pod_role_name" {
  description = "Name of an example pod role, used in the pod annotation iam.amazonaws.com/role."
  type        = string
  default     = "KiamTesterRole"
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

resource "aws_iam_role" "operator" {
  name        = "podiam-operator"
  description = "Role the podiam operator runs as; it assumes pod roles"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { AWS = var.node_role_arn }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_policy" "operator" {
  name        = "podiam-operator"
  description = "Lets the podiam operator assume pod roles (TagSession for per-pod sessions)"
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["sts:AssumeRole", "sts:TagSession"]
      Resource = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:role/*"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "operator" {
  role       = aws_iam_role.operator.name
  policy_arn = aws_iam_policy.operator.arn
}

resource "aws_iam_role" "pod" {
  name        = var.pod_role_name
  description = "An example pod role: pods annotated iam.amazonaws.com/role=${var.pod_role_name} get it"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { AWS = aws_iam_role.operator.arn }
      Action    = ["sts:AssumeRole", "sts:TagSession"]
    }]
  })
}

output "operator_role_arn" {
  description = "Put this in the chart's operator.assumeRoleArn value."
  value       = aws_iam_role.operator.arn
}
