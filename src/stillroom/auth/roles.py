"""Roles, the actions they grant, and the one check every route makes: `require(principal, action)`.

Actions follow Azure OpenAI's data actions for stored completions:

| Action | Grants |
| --- | --- |
| `stored-completions/read` | list, retrieve, messages, export, usage; read files and fine-tuning jobs |
| `stored-completions/action` | update, delete, bulk delete; upload and delete files, distill, fine-tune |
| `inference` | create chat completions |
| `models/read` | list and retrieve models (every role) |
| `admin` | the project's settings, keys and audit log |
| `organization` | create, list and delete projects (the server key only) |
| `public` | nothing to check (`/health`) |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from stillroom.errors import BadRequestError, PermissionDeniedError


class Action(StrEnum):
    READ = "stored-completions/read"
    ACT = "stored-completions/action"
    INFERENCE = "inference"
    MODELS = "models/read"
    ADMIN = "admin"
    ORGANIZATION = "organization"
    PUBLIC = "public"


class Role(StrEnum):
    READER = "reader"
    CONTRIBUTOR = "contributor"
    INFERENCE = "inference"
    ADMIN = "admin"


ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.READER: frozenset({Action.READ, Action.MODELS}),
    Role.CONTRIBUTOR: frozenset({Action.READ, Action.ACT, Action.INFERENCE, Action.MODELS}),
    Role.INFERENCE: frozenset({Action.INFERENCE, Action.MODELS}),
    Role.ADMIN: frozenset({Action.READ, Action.ACT, Action.INFERENCE, Action.MODELS, Action.ADMIN}),
}
ROLES = frozenset(r.value for r in Role)

# The one table of what each operation needs, by the handler's name (OpenAI's operation names). Every route
# of the app must be here (tests/api/test_access.py walks them); one that is not is refused with a 403.
OPERATION_ACTIONS: dict[str, Action] = {
    "create_chat_completion": Action.INFERENCE,
    "create_deployment_chat_completion": Action.INFERENCE,
    "list_chat_completions": Action.READ,
    "list_deployment_chat_completions": Action.READ,
    "get_chat_completion": Action.READ,
    "get_chat_messages": Action.READ,
    "update_chat_completion": Action.ACT,
    "delete_chat_completion": Action.ACT,
    "delete_chat_completions": Action.ACT,  # bulk delete by filter (and its dry run)
    "list_models": Action.MODELS,
    "retrieve_model": Action.MODELS,
    "list_projects": Action.ORGANIZATION,
    "create_project": Action.ORGANIZATION,
    "delete_project": Action.ORGANIZATION,
    "retrieve_project": Action.ADMIN,
    "modify_project": Action.ADMIN,
    "list_project_api_keys": Action.ADMIN,
    "create_project_api_key": Action.ADMIN,
    "delete_project_api_key": Action.ADMIN,
    "list_audit_logs": Action.ADMIN,
    "create_file": Action.ACT,
    "list_files": Action.READ,
    "retrieve_file": Action.READ,
    "download_file": Action.READ,
    "delete_file": Action.ACT,
    "create_fine_tuning_job": Action.ACT,
    "list_fine_tuning_jobs": Action.READ,
    "retrieve_fine_tuning_job": Action.READ,
    "cancel_fine_tuning_job": Action.ACT,
    "list_fine_tuning_events": Action.READ,
    "list_fine_tuning_job_checkpoints": Action.READ,
    "create_fine_tuning_dataset": Action.ACT,  # Distill: stored completions -> a training file
    "create_eval": Action.ACT,  # Evaluate
    "list_evals": Action.READ,
    "get_eval": Action.READ,
    "update_eval": Action.ACT,
    "delete_eval": Action.ACT,
    "create_eval_run": Action.ACT,
    "get_eval_runs": Action.READ,
    "get_eval_run": Action.READ,
    "cancel_eval_run": Action.ACT,
    "cancel_eval_run_by_path": Action.ACT,
    "delete_eval_run": Action.ACT,
    "get_eval_run_output_items": Action.READ,
    "get_eval_run_output_item": Action.READ,
    "get_eval_comparison": Action.READ,  # Stillroom's: an eval's runs side by side, per criterion
    "run_grader": Action.ACT,  # may call a judge model or run a python grader
    "validate_grader": Action.READ,
    "get_health": Action.PUBLIC,
    "get_readiness": Action.PUBLIC,
    "openapi": Action.PUBLIC,
    "get_console": Action.PUBLIC,  # the console's static page; its scripts call the API with a key
    "get_console_asset": Action.PUBLIC,
    "get_console_eval_run": Action.PUBLIC,  # an eval run's report_url: a redirect into the console
    "get_me": Action.PUBLIC,  # any signed-in principal may ask who it is (still needs a valid key)
}


def action_for(operation: str) -> Action | None:
    return OPERATION_ACTIONS.get(operation)


EVERYTHING = frozenset(Action)  # the server key and laptop mode


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise BadRequestError(f"Invalid 'role': expected one of {choices}.", param="role") from None


@dataclass(frozen=True, slots=True)
class StorePolicy:
    """Which traffic is stored without asking: `request` (only `store: true`), `all`, or `sample`."""

    mode: str = "request"
    sample_rate: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, in which project, with which actions.

    `subject` is what the audit log records: a key prefix, a token subject, `server-key` or `anonymous`."""

    project_id: str
    actions: frozenset[Action]
    subject: str
    all_projects: bool = False  # the server key (or laptop mode): may name any project
    key_id: str | None = None
    policy: StorePolicy | None = None  # a key's own store policy, over the project's

    def can(self, action: Action) -> bool:
        return action is Action.PUBLIC or action in self.actions


def role_of(principal: Principal) -> str | None:
    """The principal's role: `owner` for the server key (and laptop mode), the role whose actions it holds,
    or None for a token whose roles add up to no single one."""
    if principal.all_projects:
        return "owner"
    for role, actions in ROLE_ACTIONS.items():
        if actions == principal.actions:
            return role.value
    return None


def describe_principal(principal: Principal) -> dict[str, object]:
    """What `GET /v1/me` answers: enough for a client to show only what the caller may do."""
    return {
        "object": "principal",
        "project_id": principal.project_id,
        "role": role_of(principal),
        "actions": sorted(a.value for a in principal.actions),
        "subject": principal.subject,
        "all_projects": principal.all_projects,
    }


def require(principal: Principal, action: Action) -> None:
    if not principal.can(action):
        raise PermissionDeniedError(
            f"This key ({principal.subject}) lacks the permission '{action.value}' this request needs."
        )
