"""Dagster resources: the store (local folder or S3), configured from the environment."""

import dagster as dg

from foresight.datasets.storage import S3Config, Store


class ForesightStore(dg.ConfigurableResource):
    """The store root and, for ``s3://`` roots, the S3 endpoint and credentials.

    Values come through ``dg.EnvVar`` in :mod:`foresight.pipelines.definitions`; nothing secret is
    written in code. An empty ``s3_endpoint`` means a local folder.
    """

    root: str = ""
    """Store root; empty means FORESIGHT_STORE at run time (default ./.foresight)."""
    s3_endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""

    @classmethod
    def of(cls, store: Store) -> "ForesightStore":
        """The resource for ``store`` (with its S3 endpoint and keys when on S3)."""
        if not store.is_s3:
            return cls(root=store.root)
        s3 = store.fs.s3
        return cls(
            root=store.root,
            s3_endpoint=s3.endpoint,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
        )

    def store(self) -> Store:
        s3 = None
        if self.s3_endpoint:
            s3 = S3Config(
                endpoint=self.s3_endpoint, access_key=self.access_key, secret_key=self.secret_key
            )
        # An empty root reads FORESIGHT_STORE now, not when the definitions were imported.
        return Store(self.root or None, s3)
